"""Data preparation and checks outside a run: `hql-ray data`, `translate` and `parse` on Ray Data."""
