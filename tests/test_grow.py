"""Growing a finished run and a family's model for an unseen language, end to end: the tiny model, the real
driver on local Ray. One finished run (3 languages, 6 nodes, export.nodes all) is shared by the module; each
growth works on its own run folder (a new one, or a copy of the first grown in place)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import yaml

from conftest import tiny_overrides
from hql_ray.cli import main
from hql_ray.orchestration import plan
from hql_ray.orchestration.driver import Driver
from hql_ray.outputs import model_card
from hql_ray.outputs.generate import load_generator
from hql_ray.outputs.manifest import read_manifest
from hql_ray.settings.config import make_config
from hql_ray.settings.errors import InputError
from hql_ray.settings.records import NodeStarted

pytestmark = pytest.mark.slow  # four driver runs of the tiny model (a few minutes on 2 cores)

TREE = """code,level0,level1,language
deu_Latn,Indo_European,Germanic,German
nld_Latn,Indo_European,Germanic,Dutch
ita_Latn,Indo_European,Romance,Italian
"""
PLUS_LTZ = TREE + "ltz_Latn,Indo_European,Germanic,Luxembourgish\n"
PLUS_FAMILY = TREE + "hat_Latn,Indo_European,Creole,Haitian_Creole\n"
OLD_NODES = ["level0.Indo_European", "level1.Germanic", "level1.Romance", "language.German", "language.Dutch",
             "language.Italian"]
GRAPH = "(w / want-01 :ARG0 (b / boy))"


def config(out: Path, corpus: Path, name: str, tree_text: str, *extra: str):
    tree = out / f"{name}.csv"
    tree.write_text(tree_text)
    return make_config(overrides=tiny_overrides(out / "runs", corpus, tree, **{
        "run.name": name, "resources.num_gpus": 0, "eval.generate": False, "export.nodes": "all"}) + list(extra))


def drive(cfg) -> tuple:
    events = []
    manifest = Driver(cfg, on_event=events.append).run()
    return manifest, [e.node for e in events if isinstance(e, NodeStarted)]


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def outputs(run_dir: Path, nodes) -> dict[str, bytes]:
    """Every file of the nodes' adapters and of the exports under final/ (language and node models)."""
    out = {}
    for node_id in nodes:
        out.update({f"nodes/{node_id}/{k}": v for k, v in files(run_dir / "nodes" / node_id).items()})
    out.update({f"final/{k}": v for k, v in files(run_dir / "final").items()})
    return out


@pytest.fixture(scope="module")
def first(ray_session, small_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("grow")
    manifest, started = drive(config(out, small_corpus, "first", TREE))
    assert sorted(started) == sorted(OLD_NODES) and manifest.data["status"] == "done"
    return out, out / "runs" / "first"


def test_an_inner_node_export_loads_with_peft_and_generates(first, capsys):
    _, run_dir = first
    manifest = read_manifest(run_dir)
    exported = sorted(p.name for p in (run_dir / "final" / "nodes").iterdir())
    assert exported == ["level0.Indo_European", "level1.Germanic", "level1.Romance"]  # leaves: final/<code>/
    node_dir = run_dir / "final" / "nodes" / "level1.Germanic"
    assert manifest.nodes["level1.Germanic"].node_export.mode == "adapter"
    assert manifest.nodes["language.German"].node_export is None
    fields = model_card.card_fields(node_dir)
    assert fields["node"] == "level1.Germanic" and fields["prompt"] == "Translate to {language}: {amr}"
    assert fields["trained_languages"] == {"level0.Indo_European": ["deu_Latn", "nld_Latn", "ita_Latn"],
                                           "level1.Germanic": ["deu_Latn", "nld_Latn"]}
    assert yaml.safe_load((node_dir / "adapter_config.json").read_text())["r"] == 8  # root + Germanic, r=4 each

    # the card's own "Load it" code: the base as trained (4-bit), PeftModel.from_pretrained, generate
    card = (node_dir / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", card, re.S).group(1)
    assert "PeftModel.from_pretrained(base, 'final/nodes/level1.Germanic')" in code
    assert "Translate to German: " + GRAPH in code
    printed = _run_in(run_dir, code.replace("max_new_tokens=128", "max_new_tokens=8"), capsys)
    gen = load_generator(run_dir, "deu_Latn", node="level1.Germanic", device="cpu")
    assert gen.source(GRAPH) == "Translate to German: " + GRAPH
    assert printed == gen([GRAPH], max_new_tokens=8)[0]

    # any language's name in the prompt: the family's model for one it never saw
    gen = load_generator(run_dir, "ltz_Latn", node="Germanic", device="cpu")
    assert gen.source(GRAPH) == "Translate to Luxembourgish: " + GRAPH and gen.choice.family
    assert len(gen([GRAPH, GRAPH], max_new_tokens=4)) == 2
    with pytest.raises(InputError, match="unknown language 'ltz_Latn'.*the model of node level1.Germanic fits it "
                                         f".*hql-ray generate {run_dir} --node level1.Germanic --lang ltz_Latn$"):
        load_generator(run_dir, "ltz_Latn")  # (exported: no hint to export it)


def _run_in(folder: Path, code: str, capsys) -> str:
    import os

    here = os.getcwd()
    os.chdir(folder)
    try:
        capsys.readouterr()
        exec(compile(code, "card", "exec"), {})
    finally:
        os.chdir(here)
    return " ".join(capsys.readouterr().out.split())


def test_grow_by_one_language_trains_exactly_its_leaf(first, small_corpus):
    out, first_dir = first
    before = outputs(first_dir, OLD_NODES)
    first_record = (first_dir / "manifest.json").read_bytes()
    cfg = config(out, small_corpus, "plus_ltz", PLUS_LTZ, f"run.grow={first_dir}")
    planned = [n.id for n in plan.make_plan(cfg).nodes if n.status == "train"]
    manifest, started = drive(cfg)
    assert started == planned == ["language.Luxembourgish"]  # one new node, nothing else trained
    run_dir = out / "runs" / "plus_ltz"
    after = outputs(run_dir, OLD_NODES)
    assert {k: v for k, v in after.items() if "Luxembourgish" not in k and "ltz_Latn" not in k} == before
    assert (first_dir / "manifest.json").read_bytes() == first_record  # the earlier run untouched
    nodes = manifest.nodes
    assert {n for n, v in nodes.items() if v.reused_from == str(first_dir)} == set(OLD_NODES)
    assert nodes["level1.Germanic"].languages == ["deu_Latn", "nld_Latn", "ltz_Latn"]
    assert nodes["level1.Germanic"].trained_languages == ["deu_Latn", "nld_Latn"]
    leaf = nodes["language.Luxembourgish"]
    assert leaf.reused_from is None and leaf.trained_languages == ["ltz_Latn"]
    assert leaf.handed_from == ["level0.Indo_European", "level1.Germanic"]
    (grown,) = manifest.data["grown"]
    assert grown["new_nodes"] == ["language.Luxembourgish"] and grown["added_languages"] == ["ltz_Latn"]
    assert grown["source"] == str(first_dir) and grown["kept_nodes"] == OLD_NODES
    fields = model_card.card_fields(run_dir / "final" / "ltz_Latn")
    assert fields["trained_languages"]["level1.Germanic"] == ["deu_Latn", "nld_Latn"]  # not ltz: it was kept
    assert "`level1.Germanic`: deu_Latn, nld_Latn; `language.Luxembourgish`: ltz_Latn" in \
        (run_dir / "final" / "ltz_Latn" / "README.md").read_text()


def _copy(first, name: str) -> Path:
    out, first_dir = first
    target = out / "runs" / name
    shutil.copytree(first_dir, target)
    return target


def test_grow_in_place_by_a_new_family(first, small_corpus):
    out, first_dir = first
    run_dir = _copy(first, "family")
    cfg = config(out, small_corpus, "family", PLUS_FAMILY, "run.resume=true")
    manifest, started = drive(cfg)
    assert sorted(started) == ["language.Haitian_Creole", "level1.Creole"]  # the family and its leaf
    old = {k: v for k, v in outputs(run_dir, OLD_NODES).items() if "Creole" not in k and "hat_Latn" not in k}
    assert old == outputs(first_dir, OLD_NODES)
    assert (run_dir / "final" / "nodes" / "level1.Creole" / "adapter_model.safetensors").is_file()
    assert manifest.nodes["level0.Indo_European"].trained_languages == ["deu_Latn", "nld_Latn", "ita_Latn"]
    assert manifest.data["grown"][0]["new_nodes"] == ["level1.Creole", "language.Haitian_Creole"]


def test_retrain_a_node_and_what_is_below_it(first, small_corpus, capsys):
    out, first_dir = first
    run_dir = _copy(first, "retrain")
    argv = ["--resume", "--retrain", "Romance", *[a for a in tiny_overrides(
        out / "runs", small_corpus, out / "first.csv", **{"run.name": "retrain", "resources.num_gpus": 0,
                                                          "eval.generate": False, "export.nodes": "all"})]]
    assert main(["train", "--dry-run", *argv]) == 0
    assert "0 new, 2 trained again (level1.Romance, language.Italian)" in capsys.readouterr().out
    cfg = config(out, small_corpus, "retrain", TREE, "run.resume=true", "tree.retrain=[Romance]")
    manifest, started = drive(cfg)
    assert sorted(started) == ["language.Italian", "level1.Romance"]
    kept = ["level0.Indo_European", "level1.Germanic", "language.German", "language.Dutch"]
    assert {k: v for k, v in outputs(run_dir, kept).items() if k.startswith("nodes/")} == \
        {k: v for k, v in outputs(first_dir, kept).items() if k.startswith("nodes/")}
    assert manifest.nodes["level1.Romance"].retrained == 1
    # a fresh Ray Train run name: the retrained node trained again rather than continuing its old checkpoints
    assert list((run_dir / "storage").glob(f"level1.Romance.train.{manifest.run_id}.r1"))
    history = manifest.nodes["language.Italian"].history
    assert history and history[-1].step == 4


def test_resume_with_export_nodes_all_exports_what_an_earlier_run_did_not(first, small_corpus):
    out, first_dir = first
    run_dir = _copy(first, "leaves_only")
    shutil.rmtree(run_dir / "final" / "nodes")
    record = read_manifest(run_dir)
    for node_id in record.nodes:
        record.update(node_id, node_export=None)
    manifest, started = drive(config(out, small_corpus, "leaves_only", TREE, "run.resume=true"))
    assert started == []  # nothing trained
    exported = {k: v.replace(b"from the run `leaves_only`", b"from the run `first`")  # the cards name their run
                for k, v in files(run_dir / "final" / "nodes").items()}
    assert exported == files(first_dir / "final" / "nodes")
    assert manifest.nodes["level1.Romance"].node_export.mode == "adapter"
