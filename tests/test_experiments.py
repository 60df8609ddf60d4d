"""The seed README's experiment commands, run with `-bm tiny --data-dir data/sample`, and flag errors."""

from __future__ import annotations

import json
import sys

import pytest

from conftest import REPO
from hql_ray.cli import main

SAMPLE = str(REPO / "data" / "sample")
FAST = ["-bm", "tiny", "--data-dir", SAMPLE, "-ls", "8", "--max-train-per-corpus", "8", "-ts", "48", "--plain",
        "train.max_steps=2", "eval.max_new_tokens=8", "data.max_test_per_language=4", "resources.max_failures=0",
        "resources.num_gpus=0"]  # CPU slots, as on a laptop: warm workers (one Ray Train start-up per node otherwise)


def seed_command(levels: str, epochs: str, tree: str, name: str) -> list[str]:
    """An original command line: -ln "level0", "level1", ... arrives split, with commas."""
    return ["train", "-bm", "google/mt5-large", "-ln", *levels.split(" "), "-le", epochs,
            "-lf", str(REPO / "language_files" / tree), "-sn", name, "-tm", "qlora"]


def run_seed(argv, tmp_path):
    code = main([*argv, *FAST, "--output-dir", str(tmp_path)])  # later -bm tiny wins over mt5-large
    manifest = json.loads((tmp_path / argv[argv.index("-sn") + 1] / "manifest.json").read_text())
    return code, manifest


def test_monolingual_asturian(ray_session, tmp_path):
    code, manifest = run_seed(seed_command('language', "21", "ast.csv", "ast_21epochs"), tmp_path)
    assert code == 0
    (node,) = manifest["nodes"].values()
    assert node["id"] == "language.Asturian" and node["status"] == "done"
    assert manifest["config"]["train"]["epochs"] == 21.0
    assert (tmp_path / "ast_21epochs" / "final" / "ast_Latn" / "adapter_model.safetensors").is_file()


@pytest.mark.slow
@pytest.mark.parametrize(
    "levels, epochs, tree, name, n_nodes",
    [
        ('level0', "4", "12langs.csv", "12langs_4epochs", 1),
        ('level0, level1, level2, language', "1", "12langs_dlhql.csv", "12langs_dlhql", 21),
        ('level0, level1, level2, language', "1", "12langs_pthql.csv", "12langs_pthql", 21),
    ],
)
def test_seed_experiments(ray_session, tmp_path, levels, epochs, tree, name, n_nodes):
    code, manifest = run_seed(seed_command(levels, epochs, tree, name), tmp_path)
    assert code == 0
    assert len(manifest["nodes"]) == n_nodes
    assert {v["status"] for v in manifest["nodes"].values()} == {"done"}
    assert len(list((tmp_path / name / "final").iterdir())) == 12


# ---- errors before any training ------------------------------------------------------------------
def test_unknown_level_fails_before_training(tmp_path, capsys):
    code = main(["train", "-ln", "level0", "level9", "--output-dir", str(tmp_path), *FAST])
    err = capsys.readouterr().err
    assert code == 2 and "level9" in err and "12langs_pthql.csv" in err
    assert not (tmp_path / "12langs_pthql").exists()


def test_tree_and_data_mismatch(tmp_path, capsys):
    tree = tmp_path / "t.csv"
    tree.write_text("code,level0,language\nxho_Latn,Bantu,Xhosa\n")
    code = main(["train", "-lf", str(tree), "-ln", "level0", "language", "--output-dir", str(tmp_path), *FAST])
    err = capsys.readouterr().err
    assert code == 2 and "xho_Latn" in err and "missing corpus file" in err


def test_missing_data_dir(tmp_path, capsys):
    code = main(["train", "--output-dir", str(tmp_path), *FAST, "--data-dir", str(tmp_path / "nope")])
    assert code == 2 and "nope" in capsys.readouterr().err


def test_qlora_without_bitsandbytes(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import fails as on a machine without it
    code = main(["train", "--output-dir", str(tmp_path), *FAST])
    err = capsys.readouterr().err
    assert code == 2 and "qlora needs bitsandbytes" in err


def test_more_gpus_than_the_cluster_has(ray_session, tmp_path, capsys):
    logical_gpus = [a for a in FAST if a != "resources.num_gpus=0"]  # (the flag, not FAST's CPU slots)
    code = main(["train", "--output-dir", str(tmp_path), *logical_gpus, "--num-gpus", "64"])
    assert code == 2 and "--num-gpus 64 but the Ray cluster has 4 GPU(s)" in capsys.readouterr().err
