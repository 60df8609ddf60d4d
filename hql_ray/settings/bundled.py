"""The files that ship inside the package: the configs, the language files and the sample corpus.

The repository's top-level `configs/`, `language_files/` and `data/sample/` are the source; `hql_ray/bundled/`
holds symlinks to them, which a checkout and an editable install read through and a wheel build copies
(setuptools follows them), so `pip install hql-ray` gets the files under `hql_ray/bundled/` itself.

A relative path a config names (`configs/demo.yaml`, `language_files/12langs_pthql.csv`, `data/sample`) is
read from the working directory when it is there, else from the package (`locate`): the demo and the
paper's configs run from any folder, a user's own files always win.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

# The bundled folders, as a config names them (relative to a checkout's root).
SHIPPED = ("configs", "language_files", "data/sample")
DEMO_CONFIG = "configs/demo.yaml"


def root() -> Path:
    """The package's bundled folder (in a checkout: symlinks to the repository's folders)."""
    return Path(str(files("hql_ray") / "bundled"))


def shipped_path(relative: str | Path) -> Path | None:
    """The package's copy of `relative` (a path under one of `SHIPPED`), or None if it ships no such file."""
    rel = Path(relative)
    if rel.is_absolute() or ".." in rel.parts:
        return None
    if not any(rel == Path(top) or Path(top) in rel.parents for top in SHIPPED):
        return None
    path = root() / rel
    return path if path.exists() else None


def locate(path: str | None) -> str | None:
    """`path` as given when it exists (relative to the working directory) or is not a shipped one; else the
    package's copy: `language_files/12langs_pthql.csv` from an empty folder is the bundled tree file."""
    if path is None or "://" in path or Path(path).expanduser().exists():
        return path
    shipped = shipped_path(path)
    return str(shipped) if shipped is not None else path


def sample_dir() -> Path:
    """The bundled sample corpus (the demo's data, and the tiny-pretrained base's pre-training data)."""
    return root() / "data" / "sample"


def language_file(name: str) -> Path:
    return root() / "language_files" / name


SAMPLE_TITLE = "# Sample corpus (synthetic)"  # the first line of the sample's README (data/make_sample.py writes it)


def is_sample(data_dir: str | Path) -> bool:
    """The bundled sample, or a corpus its generator wrote: synthetic data, no public dataset to name."""
    readme = Path(data_dir) / "README.md"
    try:
        return readme.read_text(encoding="utf-8").startswith(SAMPLE_TITLE)
    except OSError:
        return False
