"""tree.skip (-sv) end to end on local Ray, with the simulated trainer (no model): a skipped node is not
trained; its children start from its adapter already in the run folder."""

from __future__ import annotations

import pytest

from conftest import tiny_overrides
from hql_ray.settings.config import make_config
from hql_ray.orchestration.driver import Driver
from hql_ray.training.simulate import Simulation
from hql_ray.settings.records import NodeSkipped, NodeStarted

TREE = "code,level0,language\ndeu_Latn,Top,German\n"


def run(tmp_path, small_corpus, *extra):
    tree = tmp_path / "tree.csv"
    tree.write_text(TREE)
    overrides = tiny_overrides(tmp_path / "runs", small_corpus, tree, **{
        "run.name": "skip", "tree.levels": "[level0, language]", "resources.num_gpus": 0})
    events = []
    manifest = Driver(make_config(overrides=overrides + list(extra)),
                      simulation=Simulation(0.0), on_event=events.append).run()
    started = sorted(e.node for e in events if isinstance(e, NodeStarted))
    skipped = sorted(e.node for e in events if isinstance(e, NodeSkipped))
    return manifest, started, skipped


@pytest.mark.slow  # two driver runs on Ray (about a minute on 2 cores)
def test_skip_leaf_then_skip_the_trained_root(ray_session, small_corpus, tmp_path):
    first, started, skipped = run(tmp_path, small_corpus, "tree.skip=[deu_Latn]")
    assert started == ["level0.Top"] and skipped == ["language.German"]
    assert {n: v.status for n, v in first.nodes.items()} == {"level0.Top": "done", "language.German": "skipped"}
    assert first.data["status"] == "done"
    root = first.nodes["level0.Top"]

    # the original's -sv Top on the same run folder (no --resume): the root is read from the folder
    second, started, skipped = run(tmp_path, small_corpus, "tree.skip=[Top]")
    assert started == ["language.German"] and skipped == ["level0.Top"]
    assert {v.status for v in second.nodes.values()} == {"done"}
    assert second.nodes["level0.Top"].checksum == root.checksum
    assert second.nodes["level0.Top"].started_at == root.started_at  # untouched
    assert second.nodes["language.German"].handed_from == ["level0.Top"]
