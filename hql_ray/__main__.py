from hql_ray.cli import console_main

console_main()
