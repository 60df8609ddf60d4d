import sys

from hql_ray.data.sample.generator import main

sys.exit(main())
