"""hql-ray: hierarchical QLoRA (HQL) AMR-to-text training over a language tree, on Ray."""

__version__ = "0.1.0"
