"""A tiny fastText language-ID model trained on the bundled sample's FLORES train sentences (under a
second): stands in for GlotLID in tests. Same labels as GlotLID: ``__label__<code>``.

Trained in a fresh process: in a process that has run torch generation, fastText's training
sometimes stops with "Encountered NaN" (seen here; prediction is unaffected)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SAMPLE = Path(__file__).resolve().parent.parent / "data" / "sample" / "flores"


def sample_sentences(code: str, split: str) -> list[str]:
    path = SAMPLE / code / f"flores_{code}_{split}.tsv"
    return [line.rstrip("\n").split("\t")[1] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def train_lid(folder: Path) -> Path:
    import fasttext

    lines = [f"__label__{d.name} {text}" for d in sorted(SAMPLE.iterdir()) for text in sample_sentences(d.name, "train")]
    (folder / "lid_train.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    model = fasttext.train_supervised(str(folder / "lid_train.txt"), epoch=50, lr=0.5, dim=16, minn=2, maxn=4,
                                      bucket=20000, loss="softmax", verbose=0, seed=0, thread=1)
    path = folder / "lid.bin"
    model.save_model(str(path))
    return path


@pytest.fixture(scope="session")
def tiny_lid(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("lid")
    code = f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import lid_fixture; " \
           f"lid_fixture.train_lid(__import__('pathlib').Path({str(folder)!r}))"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    return folder / "lid.bin"
