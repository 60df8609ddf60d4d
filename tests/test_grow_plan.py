"""Growing a finished run, the checks and the plan without Ray: which nodes are kept, new, trained again; a
removed or moved language refused with its old and new place, the same by the real start and --dry-run;
`generate --lang` for a language without a model names the node that fits. (The real runs: test_grow.py.)"""

from __future__ import annotations

import pytest

from conftest import tiny_overrides
from hql_ray.cli import main
from hql_ray.orchestration import plan, run_model, run_start
from hql_ray.outputs.generate import load_generator
from hql_ray.outputs.manifest import Manifest, read_manifest
from hql_ray.settings.config import make_config
from hql_ray.settings.errors import ConfigError, InputError
from hql_ray.settings.tree import load_tree

TREE = """code,level0,level1,language
deu_Latn,Indo_European,Germanic,German
nld_Latn,Indo_European,Germanic,Dutch
ita_Latn,Indo_European,Romance,Italian
"""
PLUS_TWO = TREE + "ltz_Latn,Indo_European,Germanic,Luxembourgish\nhat_Latn,Indo_European,Creole,Haitian_Creole\n"
MOVED = TREE.replace("nld_Latn,Indo_European,Germanic", "nld_Latn,Indo_European,Romance")
REMOVED = TREE.replace("ita_Latn,Indo_European,Romance,Italian\n", "")
OLD_NODES = ["level0.Indo_European", "level1.Germanic", "level1.Romance", "language.German", "language.Dutch",
             "language.Italian"]


def overrides(tmp_path, corpus, name: str, tree_text: str, **extra) -> list[str]:
    tree = tmp_path / f"{name}.csv"
    tree.write_text(tree_text)
    return tiny_overrides(tmp_path / "runs", corpus, tree, **{"run.name": name, "resources.num_gpus": 0, **extra})


def finished(tmp_path, corpus, name: str = "first", tree_text: str = TREE) -> Manifest:
    """A run record whose every node is done, as an older hql-ray wrote it (no trained_languages)."""
    cfg = make_config(overrides=overrides(tmp_path, corpus, name, tree_text)).with_absolute_paths()
    tree = load_tree(cfg.tree.file, cfg.tree.levels)
    manifest = Manifest.create(cfg.run_dir / "manifest.json", tree, cfg.to_dict(), cfg.run_name)
    for node_id in tree.nodes:
        (cfg.run_dir / "nodes" / node_id / "adapter").mkdir(parents=True)
        manifest.update(node_id, status="done", adapter=f"nodes/{node_id}/adapter")
    manifest.set_run_status("done")
    return manifest


def growth(cfg):
    tree = load_tree(cfg.tree.file, cfg.tree.levels)
    skipped = tree.skip_nodes(cfg.tree.skip)
    return run_model.growth_of(cfg, tree, skipped, run_model.check_run_folder(cfg, tree, skipped))


def test_a_new_leaf_and_a_new_family_are_all_that_trains(tmp_path, small_corpus, capsys):
    first = finished(tmp_path, small_corpus)
    argv = overrides(tmp_path, small_corpus, "grown", PLUS_TWO, **{"run.grow": first.path.parent})
    grown = growth(make_config(overrides=argv))
    assert grown.kept == tuple(OLD_NODES) and not grown.in_place and not grown.retrain
    assert grown.new == ("level1.Creole", "language.Luxembourgish", "language.Haitian_Creole")
    assert grown.added == ("ltz_Latn", "hat_Latn")
    # the dry run plans the same: the 6 finished nodes kept, 3 trained
    assert main(["train", "--dry-run", *argv]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in out.splitlines()[3:12]}
    assert [n for n, row in rows.items() if "done" in row] == OLD_NODES
    assert sorted(n for n, row in rows.items() if "done" not in row) == sorted(grown.new)
    assert f"grows the earlier run from {first.path.parent}" in out
    assert "6 finished node(s) kept as they are, 3 new (level1.Creole, language.Luxembourgish, " in out
    assert "languages added: ltz_Latn, hat_Latn" in out


def test_in_place_with_resume_and_the_record_it_leaves(tmp_path, small_corpus):
    first = finished(tmp_path, small_corpus)
    cfg = make_config(overrides=overrides(tmp_path, small_corpus, "first", PLUS_TWO, **{"run.resume": True}))
    grown = growth(cfg)
    assert grown.in_place and grown.kept == tuple(OLD_NODES) and len(grown.new) == 3
    tree = load_tree(cfg.tree.file, cfg.tree.levels)
    manifest = run_start.open_manifest(cfg.with_absolute_paths(), tree, set())
    assert manifest.path == first.path
    again = read_manifest(first.path)
    assert list(again.nodes) == list(tree.nodes)
    assert {n: v.status for n, v in again.nodes.items() if v.status != "done"} == {n: "pending" for n in grown.new}
    germanic = again.nodes["level1.Germanic"]
    assert germanic.languages == ["deu_Latn", "nld_Latn", "ltz_Latn"]  # the tree's
    assert germanic.trained_languages == ["deu_Latn", "nld_Latn"]  # what its adapter saw
    assert again.nodes["level0.Indo_European"].trained_languages == ["deu_Latn", "nld_Latn", "ita_Latn"]
    (record,) = again.data["grown"]
    assert record["kept_nodes"] == OLD_NODES and record["added_languages"] == ["ltz_Latn", "hat_Latn"]
    assert again.data["config"]["tree"]["file"].endswith("first.csv")
    assert again.data["tree"]["languages"][-1] == ["hat_Latn", "Haitian_Creole"]


@pytest.mark.parametrize("tree_text, language, before, after, retrain", [
    (MOVED, "nld_Latn (Dutch) moved", "level0.Indo_European > level1.Germanic > language.Dutch",
     "level0.Indo_European > level1.Romance > language.Dutch", "--retrain level1.Germanic language.Dutch"),
    (REMOVED, "ita_Latn (Italian) is removed", "level0.Indo_European > level1.Romance > language.Italian",
     None, "--retrain level0.Indo_European"),
])
def test_moved_or_removed_language_refused_alike_by_start_and_dry_run(tmp_path, small_corpus, capsys, tree_text,
                                                                      language, before, after, retrain):
    first = finished(tmp_path, small_corpus)
    argv = overrides(tmp_path, small_corpus, "first", tree_text, **{"run.resume": True})
    assert main(["train", *argv]) == 2  # refused before Ray starts
    err = capsys.readouterr().err
    assert f"language {language}: the earlier run trained it at {before}" in err
    assert (f"puts it at {after}" in err) if after else "does not list it" in err
    assert retrain in err and "or train the new tree as a new run (another -sn" in err
    message = err.split("error: ", 1)[1].strip()
    assert main(["train", "--dry-run", *argv]) == 2
    assert f"problem: {message}" in capsys.readouterr().out  # the same check, the same words
    assert read_manifest(first.path).to_dict() == first.to_dict()  # nothing written


def test_retrain_makes_a_moved_language_fit_and_retrains_below(tmp_path, small_corpus):
    finished(tmp_path, small_corpus)
    argv = overrides(tmp_path, small_corpus, "first", MOVED, **{"run.resume": True})
    grown = growth(make_config(overrides=argv + ["tree.retrain=[Germanic, language.Dutch]"]))
    assert grown.kept == ("level0.Indo_European", "level1.Romance", "language.Italian")
    assert grown.retrain == ("level1.Germanic", "language.German", "language.Dutch") and not grown.new
    cfg = make_config(overrides=argv + ["tree.retrain=[Germanic, language.Dutch]"]).with_absolute_paths()
    manifest = run_start.open_manifest(cfg, load_tree(cfg.tree.file, cfg.tree.levels), set())
    assert manifest.nodes["language.German"].retrained == 1 and manifest.nodes["language.German"].adapter is None
    run_id = manifest.run_id
    assert manifest.run_id_of("language.German") == f"{run_id}.r1"  # its Ray Train run: not the old checkpoints
    assert manifest.run_id_of("level1.Romance") == run_id


def test_retrain_needs_an_earlier_run_and_is_not_a_skip(tmp_path, small_corpus):
    argv = overrides(tmp_path, small_corpus, "new", TREE)
    with pytest.raises(ConfigError, match="--retrain retrains nodes of an earlier run: add --resume"):
        growth(make_config(overrides=argv + ["tree.retrain=[Germanic]"]))
    finished(tmp_path, small_corpus, "new")
    with pytest.raises(ConfigError, match="--retrain and -sv name the same node"):
        growth(make_config(overrides=argv + ["run.resume=true", "tree.retrain=[Germanic]", "tree.skip=[German]"]))
    with pytest.raises(ConfigError, match="tree.retrain \\(--retrain\\): no node 'Celtic'"):
        growth(make_config(overrides=argv + ["run.resume=true", "tree.retrain=[Celtic]"]))


def test_a_language_added_to_a_trained_leaf_needs_that_leaf_retrained(tmp_path, small_corpus):
    levels = {"tree.levels": "[level0, level1]"}
    first = finished(tmp_path, small_corpus, "groups")
    first.path.unlink()
    cfg = make_config(overrides=overrides(tmp_path, small_corpus, "groups", TREE, **levels)).with_absolute_paths()
    tree = load_tree(cfg.tree.file, cfg.tree.levels)
    manifest = Manifest.create(cfg.run_dir / "manifest.json", tree, cfg.to_dict(), cfg.run_name)
    for node_id in tree.nodes:
        manifest.update(node_id, status="done", adapter=f"nodes/{node_id}/adapter")
    argv = overrides(tmp_path, small_corpus, "groups", TREE + "ltz_Latn,Indo_European,Germanic,Luxembourgish\n",
                     **levels, **{"run.resume": True})
    with pytest.raises(ConfigError, match="language ltz_Latn \\(Luxembourgish\\) is added at level0.Indo_European > "
                                          "level1.Germanic, whose leaf level1.Germanic the earlier run trained "
                                          "without it.*--retrain level1.Germanic"):
        growth(make_config(overrides=argv))
    assert growth(make_config(overrides=argv + ["tree.retrain=[Germanic]"])).retrain == ("level1.Germanic",)


def test_generate_for_a_language_without_a_model_names_the_node_that_fits(tmp_path, small_corpus, capsys):
    first = finished(tmp_path, small_corpus)
    run_dir = first.path.parent
    first.update("language.Dutch", status="failed", adapter=None)
    with pytest.raises(InputError, match="no exported model for nld_Latn: its leaf node language.Dutch is failed; "
                                         "the model of node level1.Germanic fits it .*: hql-ray generate "
                                         f"{run_dir} --node level1.Germanic --lang nld_Latn .*export.nodes=all"):
        load_generator(run_dir, "nld_Latn")
    # outside the tree: its closest relatives by Glottolog family
    with pytest.raises(InputError, match="unknown language 'ltz_Latn'; this run's languages: .*; the model of node "
                                         "level1.Germanic fits it \\(Luxembourgish's closest relatives in this run "
                                         "by Glottolog family are German \\(deu_Latn\\)"):
        load_generator(run_dir, "ltz_Latn")
    with pytest.raises(InputError, match="the model of node level1.Romance fits it \\(French's closest relatives "
                                         "in this run by Glottolog family are Italian"):
        load_generator(run_dir, "fra_Latn")
    assert main(["generate", str(run_dir), "--node", "Germanic"]) == 2
    assert "node level1.Germanic is a family's model (trained on deu_Latn, nld_Latn): name the language" in \
        capsys.readouterr().err
    assert main(["generate", str(run_dir), "--node", "Germanic", "--lang", "ltz_Latn"]) == 2
    assert "no exported model for node level1.Germanic (it is done): inner nodes are exported with " \
           "export.nodes=all" in capsys.readouterr().err
