"""Bad input is found before Ray starts (preflight.check, called by the driver first), with file and line:
test sets, LDC2020T07, malformed graphs anywhere in a file, validation budgets, corpora not used, -sv."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from hql_ray.data import corpus
from hql_ray.orchestration import driver, preflight
from hql_ray.settings.config import make_config
from hql_ray.orchestration.driver import Driver
from hql_ray.settings.errors import ConfigError, InputError
from hql_ray.settings.tree import load_tree

TREE = "code,level0,language\ndeu_Latn,Germanic,German\nfra_Latn,Romance_x,French\n"
ROOTED = "code,level0,language\ndeu_Latn,Top,German\nfra_Latn,Top,French\n"
GRAPHS = ["(s / see-01 :ARG0 (b / boy) :ARG1 (c / cat))", "(r / run-02 :ARG0 (g / girl))", "(e / eat-01 :ARG0 (d / dog))"]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def original_data(root: Path, n: int = 3, codes=("deu_Latn", "fra_Latn")) -> Path:
    """The original repository's layout: GoldAMR_SilverText/data/amr3, SilverAMR_GoldText/data/flores, LDC."""
    for code in codes:
        for split in corpus.SPLITS:
            rows = "".join(f"{GRAPHS[i % 3]}\t{code} {split} {i}\n" for i in range(n))
            write(root / "GoldAMR_SilverText" / "data" / "amr3" / code / f"amr3_{code}_{split}.tsv", rows)
            write(root / "SilverAMR_GoldText" / "data" / "flores" / code / f"flores_{code}_{split}.tsv", rows)
    write(root / "ldc2020t07" / "data" / "graph_amr" / "graph_amr-test.txt", "\n".join(GRAPHS[:2]) + "\n")
    write(root / "ldc2020t07" / "data" / "deu_Latn" / "deu_Latn-test.txt", "Ein Junge.\nEin Mädchen.\n")
    return root


def config(tmp_path: Path, data: Path, tree_text: str = TREE, **extra):
    tree = write(tmp_path / "tree.csv", tree_text)
    values = {"data.dir": data, "tree.file": tree, "tree.levels": "[level0, language]", "model.base": "tiny",
              "model.mode": "lora", "run.output_dir": tmp_path / "runs", "data.validation_size": 8}
    values.update(extra)
    cfg = make_config(overrides=[f"{k}={v}" for k, v in values.items()])
    return cfg, load_tree(cfg.tree.file, cfg.tree.levels)


def test_the_originals_layout_passes_and_sizes_are_capped_per_corpus(tmp_path):
    cfg, tree = config(tmp_path, original_data(tmp_path / "data", n=5), **{"data.max_train_per_corpus": 4})
    sizes = preflight.check(cfg, tree)
    assert sizes == {"level0.Germanic": 8, "level0.Romance_x": 8, "language.German": 8, "language.French": 8}


def test_no_ldc_folder_is_said_once_and_is_not_an_error(tmp_path, caplog):
    data = original_data(tmp_path / "data")
    for path in sorted((data / "ldc2020t07").rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    (data / "ldc2020t07").rmdir()
    cfg, tree = config(tmp_path, data)
    with caplog.at_level(logging.WARNING, logger="hql_ray.orchestration.preflight"):
        preflight.check(cfg, tree)
    said = [r.getMessage() for r in caplog.records if "LDC2020T07 is not scored" in r.getMessage()]
    assert len(said) == 1 and "no ldc2020t07 folder" in said[0]


def test_missing_ldc_file_for_a_language_that_should_have_it(tmp_path):
    data = original_data(tmp_path / "data")
    cfg, tree = config(tmp_path, data, TREE.replace("fra_Latn,Romance_x,French", "ita_Latn,Romance_x,Italian"))
    original_data(data, codes=("ita_Latn",))
    with pytest.raises(InputError) as err:
        preflight.check(cfg, tree)
    assert err.value.path == str(data / "ldc2020t07" / "data" / "ita_Latn" / "ita_Latn-test.txt")
    assert "no LDC2020T07 sentences for ita_Latn (Italian)" in err.value.problem
    # not scored: not checked
    cfg, tree = config(tmp_path, data, TREE.replace("fra_Latn,Romance_x,French", "ita_Latn,Romance_x,Italian"),
                       **{"eval.test_sets": "[flores]"})
    assert preflight.check(cfg, tree)["language.Italian"] == 3 + 3


def test_misaligned_ldc_pair(tmp_path):
    data = original_data(tmp_path / "data")
    write(data / "ldc2020t07" / "data" / "deu_Latn" / "deu_Latn-test.txt", "Nur einer.\n")
    cfg, tree = config(tmp_path, data)
    with pytest.raises(InputError) as err:
        preflight.check(cfg, tree)
    assert "2 graphs in" in err.value.problem and "but 1 sentences in" in err.value.problem


def test_empty_test_split_of_a_scored_test_set(tmp_path):
    data = original_data(tmp_path / "data")
    empty = write(data / "SilverAMR_GoldText" / "data" / "flores" / "fra_Latn" / "flores_fra_Latn_test.tsv", "\n\n")
    cfg, tree = config(tmp_path, data)
    with pytest.raises(InputError) as err:
        preflight.check(cfg, tree)
    assert str(err.value) == f"{empty}: empty flores test split for fra_Latn (French): no rows"
    # not generating: the test sets are not read
    cfg, tree = config(tmp_path, data, **{"eval.generate": "false"})
    preflight.check(cfg, tree)


def test_a_scored_test_set_without_a_file(tmp_path):
    data = original_data(tmp_path / "data")
    cfg, tree = config(tmp_path, data, **{"eval.test_sets": "[flores, amr3]", "data.corpora": "[flores]"})
    preflight.check(cfg, tree)
    (data / "GoldAMR_SilverText" / "data" / "amr3" / "deu_Latn" / "amr3_deu_Latn_test.tsv").unlink()
    with pytest.raises(InputError) as err:
        preflight.check(cfg, tree)
    assert "no amr3 test split for deu_Latn (German)" in err.value.problem


def test_malformed_graph_deep_in_a_long_file_is_found_once(tmp_path, monkeypatch):
    """The whole file is parsed before Ray starts; a file that passed is not parsed again until it changes."""
    data = original_data(tmp_path / "data", n=3000)
    path = data / "GoldAMR_SilverText" / "data" / "amr3" / "fra_Latn" / "amr3_fra_Latn_train.tsv"
    lines = path.read_text().splitlines()
    lines[2876] = "(s / see-01 :ARG0 (b / boy)\tUn garçon voit."
    write(path, "\n".join(lines) + "\n")
    cfg, tree = config(tmp_path, data)
    with pytest.raises(InputError) as err:
        preflight.check(cfg, tree)
    assert err.value.path == str(path) and err.value.line == 2877 and "malformed AMR" in err.value.problem
    # skip_bad: counted out, not an error
    cfg_skip, _ = config(tmp_path, data, **{"data.skip_bad": "true", "data.max_train_per_corpus": "null"})
    assert preflight.check(cfg_skip, tree)["language.French"] == 2999 + 3000
    # fixed: parsed once, then remembered by size and mtime
    lines[2876] = GRAPHS[0] + "\tUn garçon voit."
    write(path, "\n".join(lines) + "\n")
    calls = []
    real = corpus.read_tsv
    monkeypatch.setattr(corpus, "read_tsv", lambda p, *a, **k: calls.append(Path(p)) or real(p, *a, **k))
    preflight.check(cfg, tree)
    assert len(calls) == 2 * 2 * 2 + 2  # train + validation of 2 corpora x 2 languages, flores test x 2
    calls.clear()
    assert preflight.check(cfg, tree) == preflight.check(cfg, tree)
    assert calls == []
    os.utime(path, ns=(1, 1))
    preflight.check(cfg, tree)
    assert calls == [path]


def test_validation_budget_too_small_for_a_node(tmp_path):
    cfg, tree = config(tmp_path, original_data(tmp_path / "data"), ROOTED, **{"data.validation_size": 3})
    with pytest.raises(ConfigError) as err:
        preflight.check(cfg, tree)
    assert "gives node level0.Top no validation row: 2 languages x 2 corpora need at least 4" in err.value.problem
    # the root skipped (-sv): the leaves need 2 each, and get 3 // 1 // 2 = 1
    preflight.check(cfg, tree, skipped={"level0.Top"})


def test_corpora_not_used_are_reported_and_unknown_ones_refused(tmp_path, caplog):
    data = original_data(tmp_path / "data")
    for code in ("deu_Latn", "fra_Latn"):
        for split in corpus.SPLITS:
            write(data / "amr3_old" / code / f"amr3_old_{code}_{split}.tsv", f"{GRAPHS[0]}\tx\n")
    cfg, tree = config(tmp_path, data)
    with caplog.at_level(logging.WARNING, logger="hql_ray.orchestration.preflight"):
        preflight.check(cfg, tree)
    assert "data: training on amr3, flores; not used: amr3_old" in caplog.text
    cfg, tree = config(tmp_path, data, **{"data.corpora": "[amr4]"})
    with pytest.raises(InputError) as err:
        preflight.check(cfg, tree)
    assert err.value.problem == "unknown corpus amr4; available: amr3, amr3_old, flores"


def test_skipped_node_without_its_adapter_fails_before_ray(tmp_path, monkeypatch):
    def no_ray(cfg):
        raise AssertionError("Ray must not start")

    monkeypatch.setattr(driver, "init_ray", no_ray)
    cfg, _ = config(tmp_path, original_data(tmp_path / "data"), ROOTED, **{"tree.skip": "[Top]"})
    with pytest.raises(ConfigError) as err:
        Driver(cfg).start()
    assert "node level0.Top is skipped, but nodes below it train in this run" in err.value.problem
    cfg, _ = config(tmp_path, original_data(tmp_path / "data"), ROOTED, **{"tree.skip": "[Bottom]"})
    with pytest.raises(ConfigError) as err:
        Driver(cfg)
    assert "no node 'Bottom'" in err.value.problem and "valid values: Top, German, French" in err.value.problem


def test_evaluation_files_are_checked_too(tmp_path, caplog):
    data = original_data(tmp_path / "data")
    cfg, tree = config(tmp_path, data, **{"eval.lid_model": tmp_path / "none.bin"})
    with pytest.raises(ConfigError) as err:
        preflight.check(cfg, tree)
    assert "eval.lid_model: no such file" in err.value.problem
    cfg, tree = config(tmp_path, data)
    with caplog.at_level(logging.WARNING, logger="hql_ray.orchestration.preflight"):
        preflight.check(cfg, tree)
    assert "LID and LID diff: not computed: no LID model" in caplog.text
