import sys

from hql_ray.cli import main

sys.exit(main())
