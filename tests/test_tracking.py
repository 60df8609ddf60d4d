"""Experiment tracking (hql_ray.training.tracking): TensorBoard event files, W&B offline runs, MLflow parent and nested runs
against a real `mlflow server`, and a tracking failure that warns once while the node trains on."""

from __future__ import annotations

import dataclasses

import glob
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
import warnings
from pathlib import Path

import pytest

from conftest import tiny_overrides
from hql_ray.training import tracking
from hql_ray.settings.config import Config, make_config
from hql_ray.training.context import LocalContext
from hql_ray.training.node import train_node
from hql_ray.settings.records import HistoryPoint, NodeMetrics, NodeSpec
from hql_ray.settings.tree import load_tree

GERMAN = NodeSpec("language.German", "German", "language", 2, "level1.Germanic", True, (("deu_Latn", "German"),))
ROOT = NodeSpec("level0.Indo_European", "Indo_European", "level0", 0, None, False,
                (("deu_Latn", "German"), ("nld_Latn", "Dutch")))


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory) -> Path:
    """One tokenization cache and tiny base for the module's runs."""
    return tmp_path_factory.mktemp("tracking-cache")


@pytest.fixture
def config(shared_cache, small_corpus, four_language_tree):
    def make(tmp_path, **extra) -> Config:
        return node_config(tmp_path, small_corpus, four_language_tree, **{"data.cache_dir": shared_cache, **extra})
    return make


def node_config(tmp_path, small_corpus, four_language_tree, **extra) -> Config:
    values = {"run.name": "tracked", "train.max_steps": 4, "train.eval_every": 2, "train.log_every": 1,
              "eval.at_nodes": "all", "eval.generate": "false", "tracking.tensorboard": "false"}
    values.update(extra)
    return make_config(overrides=tiny_overrides(tmp_path, small_corpus, four_language_tree, **values)).with_absolute_paths()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- TensorBoard ----------------------------------------------------------------------------------
def scalars(folder: Path) -> dict[str, dict[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


def test_tensorboard_curves_scores_and_run_text(tmp_path, config):
    cfg = config(tmp_path, **{"tracking.tensorboard": "true",
                                                                 "eval.generate": "true"})
    run_tracking = tracking.RunTracking.open(cfg, load_tree(cfg.tree.file, cfg.tree.levels), cfg.run_dir)
    out = train_node(cfg, dataclasses.replace(GERMAN, step_offset=10), [], LocalContext())
    history = out.history

    got = scalars(cfg.run_dir / "tensorboard" / GERMAN.id)
    train = {h.step: h.train_loss for h in history if h.train_loss is not None}
    val = {h.step: h.val_loss for h in history if h.val_loss is not None}
    assert sorted(train) == [1, 2, 3, 4] and sorted(val) == [0, 2, 4]
    assert got["loss/train"] == pytest.approx(train) and got["loss/val"] == pytest.approx(val)
    # The same curves against steps counted from the root: the ancestors trained 10 steps before this node.
    assert got["loss_from_root/train"] == pytest.approx({10 + s: v for s, v in train.items()})
    assert got["loss_from_root/val"] == pytest.approx({10 + s: v for s, v in val.items()})
    assert sorted(got["train/lr"]) == [1, 2, 3, 4] and got["train/lr"][4] < got["train/lr"][1]  # linear decay
    assert all(v > 0 for v in got["train/tokens_per_s"].values())
    assert all(v > 0 for v in got["train/peak_memory_gb"].values())
    chrf = out.metrics.languages["deu_Latn"]["flores"].chrf
    assert got["eval/deu_Latn/flores/chrf++"] == {4: pytest.approx(chrf)}
    assert got["best/val_loss"] == {4: pytest.approx(out.metrics.val_loss)}

    # The run's own folder: the config (YAML) and the tree as text, written once.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    top = EventAccumulator(str(cfg.run_dir / "tensorboard"), size_guidance={"tensors": 0})
    top.Reload()
    texts = {tag: top.Tensors(tag)[0].tensor_proto.string_val[0].decode() for tag in top.Tags()["tensors"]}
    assert "model:" in texts["config/text_summary"] and "base: tiny" in texts["config/text_summary"]
    assert "language.German" in texts["tree/text_summary"]
    tracking.RunTracking.open(cfg, load_tree(cfg.tree.file, cfg.tree.levels), cfg.run_dir)  # a --resume
    assert len(glob.glob(str(cfg.run_dir / "tensorboard" / "events.out.tfevents.*"))) == 1
    run_tracking.close(None, cfg.run_dir)  # nothing to upload without MLflow


# ---- Weights & Biases (offline) -------------------------------------------------------------------
def wandb_records(path: str):
    """The records of an offline run's .wandb file (LevelDB-style log blocks of protobuf records)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, block, buf = Path(path).read_bytes(), 7, 32768, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if length == 0 and kind == 0:
            pos += left
            continue
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        buf = chunk if kind in (1, 2) else buf + chunk
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(buf)
            yield record


def test_wandb_offline_run_per_node(tmp_path, config, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-dir"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = config(tmp_path, **{"tracking.wandb": "true"})
    with warnings.catch_warnings():
        warnings.simplefilter("error", tracking.TrackingWarning)
        out = train_node(cfg, dataclasses.replace(GERMAN, step_offset=6), [], LocalContext())

    [path] = glob.glob(str(tmp_path / "wandb-dir" / "wandb" / "offline-run-*" / "run-*.wandb"))
    deadline = time.time() + 60  # wandb's service process may still be writing the file on a busy machine
    while True:
        run, history, summary = None, [], {}
        for record in wandb_records(path):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                run = record.run
            elif kind == "history":
                history.append({"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in record.history.item})
            elif kind == "summary":
                summary.update({"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in record.summary.update})
        # wandb's service writes the file as it goes: wait for every step and the final summary
        if (run is not None and "best/val_loss" in summary and len(history) >= len(out.history)) \
                or time.time() > deadline:
            break
        time.sleep(1)
    assert run is not None, f"no run record in {path}"
    assert run.display_name == GERMAN.id and run.run_group == "tracked"
    config_values = {i.key: json.loads(i.value_json) for i in run.config.update}
    assert config_values["level"] == "language" and config_values["languages"] == ["deu_Latn"]
    train = {h["_step"]: h["loss/train"] for h in history if "loss/train" in h}
    assert train == pytest.approx({h.step: h.train_loss for h in out.history if h.train_loss is not None})
    assert {h["_step"]: h["global_step"] for h in history if "loss/val" in h} == {0: 6, 2: 8, 4: 10}
    assert summary["best/val_loss"] == pytest.approx(out.metrics.val_loss)


# ---- MLflow against a real server -----------------------------------------------------------------
@pytest.fixture(scope="module", autouse=True)
def mlflow_process(request, tmp_path_factory):
    """A real `mlflow server` (sqlite store, local artifacts) on a free loopback port, started with the module
    (when a selected test needs it) so that it comes up while the first tests train; stopped with its whole
    process group."""
    try:
        import mlflow  # noqa: F401
    except ImportError:
        yield None
        return
    if not any("mlflow_server" in getattr(item, "fixturenames", ()) for item in request.session.items):
        yield None
        return
    root, port = tmp_path_factory.mktemp("mlflow"), free_port()
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")  # no job runner processes
    proc = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1",
                             "--port", str(port), "--workers", "1",
                             "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
                             "--artifacts-destination", str(root / "artifacts")],
                            cwd=root, env=env, stdout=open(root / "server.log", "w"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    yield proc, f"http://127.0.0.1:{port}", root / "server.log"
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=wait)
            break
        except (ProcessLookupError, subprocess.TimeoutExpired):
            continue


@pytest.fixture
def mlflow_server(mlflow_process):
    if mlflow_process is None:
        pytest.skip("mlflow is not installed (the `tracking` extra)")
    proc, uri, server_log = mlflow_process
    deadline = time.time() + 240  # seconds at an idle machine; minutes on a loaded one
    while True:
        try:
            urllib.request.urlopen(uri + "/health", timeout=2).read()
            return uri
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                pytest.fail("mlflow server did not start: " + server_log.read_text()[-3000:])
            time.sleep(0.5)


# ---- failures ---------------------------------------------------------------------------------------
def test_dead_tracking_server_warns_once_and_training_goes_on(tmp_path, config):
    pytest.importorskip("mlflow")
    cfg = config(tmp_path, **{
        "tracking.mlflow_uri": f"http://127.0.0.1:{free_port()}", "tracking.tensorboard": "true"})
    tree = load_tree(cfg.tree.file, cfg.tree.levels)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_tracking = tracking.RunTracking.open(cfg, tree, cfg.run_dir)
        out = train_node(cfg, GERMAN, [], LocalContext())
        run_tracking.close(FinishedManifest(), cfg.run_dir)
    ours = [str(w.message) for w in caught if issubclass(w.category, tracking.TrackingWarning)]
    # One warning from the driver's side, one from the node's; each says what failed.
    assert len(ours) == 2 and all("mlflow" in m for m in ours), ours
    assert out.metrics.steps == 4 and out.adapter is not None
    assert cfg.tracking.mlflow_parent_run_id is None
    assert "loss/train" in scalars(cfg.run_dir / "tensorboard" / GERMAN.id)  # the other backends go on


class FinishedManifest:
    data = {"status": "done"}


def test_mlflow_parent_and_nested_runs(tmp_path, config, mlflow_server):
    from mlflow.tracking import MlflowClient

    cfg = config(tmp_path, **{"tracking.mlflow_uri": mlflow_server,
                                                                 "tracking.mlflow_experiment": "tracking-test"})
    with warnings.catch_warnings():
        warnings.simplefilter("error", tracking.TrackingWarning)
        run_tracking = tracking.RunTracking.open(cfg, load_tree(cfg.tree.file, cfg.tree.levels), cfg.run_dir)
        parent_id = cfg.tracking.mlflow_parent_run_id
        assert parent_id
        root = train_node(cfg, ROOT, [], LocalContext())
        child = train_node(cfg, dataclasses.replace(GERMAN, step_offset=4), [root.adapter], LocalContext())
        # What the driver has written by the end of a run: uploaded as the parent's artifacts.
        (cfg.run_dir / "manifest.json").write_text("{}")
        (cfg.run_dir / "results.md").write_text("# results\n")
        (cfg.run_dir / "final" / "deu_Latn").mkdir(parents=True)
        (cfg.run_dir / "final" / "deu_Latn" / "README.md").write_text("# card\n")
        run_tracking.close(FinishedManifest(), cfg.run_dir)

    client = MlflowClient(tracking_uri=mlflow_server)
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED" and parent.info.run_name == "tracked"
    assert parent.data.params["train.max_steps"] == "4"
    artifacts = {a.path for a in client.list_artifacts(parent_id)}
    assert {"manifest.json", "results.md", "model_cards"} <= artifacts
    assert [a.path for a in client.list_artifacts(parent_id, "model_cards/deu_Latn")] == ["model_cards/deu_Latn/README.md"]

    nested = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'")
    by_name = {r.info.run_name: r for r in nested}
    assert set(by_name) == {ROOT.id, GERMAN.id}
    for out, node, offset in ((root, ROOT, 0), (child, GERMAN, 4)):
        run = by_name[node.id]
        assert run.info.status == "FINISHED"
        assert run.data.params["level"] == node.level and run.data.params["step_offset"] == str(offset)
        train = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "loss/train")}
        assert train == pytest.approx({h.step: h.train_loss for h in out.history if h.train_loss is not None})
        from_root = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "loss_from_root/val")}
        assert sorted(from_root) == [offset, offset + 2, offset + 4]


def test_a_backend_failing_mid_run_warns_once(tmp_path):
    from hql_ray.settings.records import HistoryPoint, NodeMetrics, NodeSpec

    class Broken(tracking._Backend):
        name = "broken"
        calls = 0

        def log(self, values, step, global_step):
            Broken.calls += 1
            raise ConnectionError("server gone")

    tracked = tracking.Tracked("node x")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tracked.add("broken", Broken)
        tracked.add("missing", lambda: __import__("no_such_tracking_package"))  # a package not installed
        tracker = tracking.NodeTracker(NodeSpec("x", "x", "", 0, None, True, ()), tracked)
        for step in range(5):
            tracker.point(HistoryPoint(step, train_loss=1.0))
        tracker.finish(NodeMetrics(val_loss=1.0))
        tracker.close()
    assert Broken.calls == 1
    assert [str(w.message) for w in caught] == [
        "node x: tracking to missing switched off: ModuleNotFoundError: No module named 'no_such_tracking_package'",
        "node x: tracking to broken switched off: ConnectionError: server gone"]


def test_other_ranks_log_nothing(tmp_path, config):
    cfg = config(tmp_path, **{"tracking.tensorboard": "true",
                                                                 "tracking.mlflow_uri": "http://127.0.0.1:9"})
    from hql_ray.settings.records import HistoryPoint, NodeMetrics, NodeSpec

    tracker = tracking.NodeTracker.open(cfg, GERMAN, rank=1)
    assert not tracker.active and not (cfg.run_dir / "tensorboard").exists()


# ---- through the driver and Ray ---------------------------------------------------------------------
@pytest.mark.slow
def test_driver_run_logs_every_node_from_the_root(ray_session, small_corpus, tmp_path):
    """A real run (root + 2 leaves on Ray): each node's TensorBoard run, the leaves' steps counted from the root's."""
    from hql_ray.orchestration.driver import Driver

    tree = tmp_path / "two.csv"
    tree.write_text("code,level0,language\ndeu_Latn,Germanic,German\nnld_Latn,Germanic,Dutch\n")
    cfg = make_config(overrides=tiny_overrides(tmp_path, small_corpus, tree, **{
        "run.name": "tb", "tree.levels": "[level0, language]", "resources.num_gpus": 0,
        "resources.cpus_per_worker": 1, "eval.generate": "false", "train.eval_every": 2}))
    manifest = Driver(cfg).run()
    assert {v.status for v in manifest.nodes.values()} == {"done"}
    board = tmp_path / "tb" / "tensorboard"
    root = scalars(board / "level0.Germanic")
    assert sorted(root["loss_from_root/val"]) == [0, 2, 4]
    for leaf in ("language.German", "language.Dutch"):
        got = scalars(board / leaf)
        assert sorted(got["loss/val"]) == [0, 2, 4] and sorted(got["loss_from_root/val"]) == [4, 6, 8]
        assert got["loss/val"][0] == pytest.approx(manifest.nodes[leaf].metrics.initial_val_loss)
    assert list(board.glob("events.out.tfevents.*"))  # the run's config and tree
