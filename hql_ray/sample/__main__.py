import sys

from hql_ray.sample.generator import main

sys.exit(main())
