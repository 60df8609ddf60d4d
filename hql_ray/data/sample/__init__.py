"""The bundled sample corpus's generator (data/sample): synthetic AMR graphs and sentences in 12 languages.

Not part of a run: tests and the demo's data are made with it. `python -m hql_ray.data.sample DIR` writes it.
"""

from hql_ray.data.sample.generator import write_sample

__all__ = ["write_sample"]
