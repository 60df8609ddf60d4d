"""Shared fixtures: one local Ray for the whole session (a Ray start costs seconds), small corpora."""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "data"))  # make_sample: the bundled sample's generator (not part of the package)

# Tests never download: the tiny model and byte-level tokenizer need no hub; spBLEU needs eval.spbleu_model.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# ... nor read this machine's Hugging Face and sacreBLEU caches: GlotLID and the flores200 SentencePiece model
# fetched there (hql-ray fetch-eval-models) would otherwise be every run's LID and spBLEU models, Ray workers' too.
for _cache in ("HF_HUB_CACHE", "SACREBLEU"):
    if _cache not in os.environ:
        os.environ[_cache] = tempfile.mkdtemp(prefix=f"hql-tests-{_cache.lower()}-")
        atexit.register(shutil.rmtree, os.environ[_cache], True)
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")


@pytest.fixture(scope="session")
def ray_session():
    """Local Ray with 2 CPUs and 4 logical GPU slots, shared by every test that needs Ray."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, num_gpus=4, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory) -> Path:
    """The bundled generator, small: 12 languages, amr3 + flores, a few dozen examples each."""
    from make_sample import write_sample

    out = tmp_path_factory.mktemp("corpus")
    write_sample(out, n_train=24, n_validation=6, n_test=4, n_flores_train=8, n_flores_validation=2,
                 n_flores_test=2)
    return out


FOUR_LANGUAGE_TREE = """code,level0,level1,language
deu_Latn,Indo_European,Germanic,German
nld_Latn,Indo_European,Germanic,Dutch
ita_Latn,Indo_European,Romance,Italian
spa_Latn,Indo_European,Romance,Spanish
"""


@pytest.fixture(scope="session")
def four_language_tree(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tree") / "four.csv"
    path.write_text(FOUR_LANGUAGE_TREE)
    return path


TWO_LANGUAGE_TREE = "code,level0,language\ndeu_Latn,Germanic,German\ntpi_Latn,Germanic,Tok_Pisin\n"


@pytest.fixture(scope="session")
def demo_like_run(ray_session, tmp_path_factory) -> Path:
    """A finished run folder like the demo's, made by `hql-ray train` (the command, in this process): the bundled
    sample, a Germanic root over German and Tok Pisin, the tiny base in 4-bit, a few steps a node, the leaves scored
    on the sample's flores and amr3 test splits, exported with their model cards."""
    from hql_ray.cli import main

    root = tmp_path_factory.mktemp("demo_like")
    tree = root / "tree.csv"
    tree.write_text(TWO_LANGUAGE_TREE)
    code = main(["train", "-bm", "tiny", "--data-dir", str(REPO / "data" / "sample"), "-lf", str(tree),
                 "--levels", "level0", "language", "-sn", "demo_like", "-o", str(root / "runs"), "-ls", "4", "--plain",
                 "train.max_steps=3", "eval.max_new_tokens=8", "data.max_test_per_language=4",
                 "eval.test_sets=[flores, amr3]", "resources.max_failures=0", f"data.cache_dir={root / 'cache'}"])
    assert code == 0
    return root / "runs" / "demo_like"


def tiny_overrides(output_dir, data_dir, tree_file, **extra) -> list[str]:
    """key=value overrides for a fast tiny-model run (a few optimizer steps per node)."""
    values = {
        "run.output_dir": output_dir,
        "data.dir": data_dir,
        "data.cache_dir": Path(output_dir) / ".cache",
        "tree.file": tree_file,
        "tree.levels": "[level0, level1, language]",
        "model.base": "tiny",
        "model.mode": "qlora",
        "model.lora.r": 4,
        "train.batch_size": 8,
        "train.max_steps": 4,
        "train.learning_rate": 3e-3,
        "eval.at_nodes": "leaves",
        "eval.max_new_tokens": 8,
        "resources.max_failures": 0,
        "resources.min_examples_per_worker": 48,
    }
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]


def unreleased_resources(timeout_s: float = 30.0) -> dict:
    """CPUs/GPUs still reserved and placement groups still alive, once Ray has had `timeout_s` to settle
    ({} when everything came back)."""
    import ray
    from ray.util.placement_group import placement_group_table

    deadline = time.time() + timeout_s
    while True:
        total, free = ray.cluster_resources(), ray.available_resources()
        held = {k: total[k] - free.get(k, 0.0) for k in ("CPU", "GPU") if abs(total.get(k, 0.0) - free.get(k, 0.0)) > 1e-6}
        live = [(pg["bundles"], pg["state"]) for pg in placement_group_table().values() if pg["state"] != "REMOVED"]
        if (not held and not live) or time.time() > deadline:
            return {"held": held, "placement_groups": live} if held or live else {}
        time.sleep(0.5)


# The same savings the driver makes for a local Ray (see driver.init_ray).
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
os.environ.setdefault("RAY_TRAIN_METRICS_ENABLED", "0")


def ray_processes_of_this_process(title: str) -> list:
    """Processes of OUR local Ray (its raylet is a child of this test process) whose title starts with
    `title`: "ray::RayTrainWorker" (a Ray Train worker), "ray::NodeWorker" (a warm worker)."""
    import psutil

    found = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if " ".join(proc.cmdline()).startswith(title):
                found.append(proc)
        except psutil.Error:
            continue
    return found


def driver_in_thread(cfg, on_event=None):
    """`Driver(cfg).run()` started in a daemon thread, for a test that acts on the run meanwhile (kills a
    worker): (the thread, a dict that gets "manifest", or "error" when the run raised)."""
    import threading

    from hql_ray.orchestration.driver import Driver

    outcome: dict = {}

    def drive():
        try:
            outcome["manifest"] = Driver(cfg, on_event=on_event).run()
        except BaseException as err:  # noqa: BLE001 - reported by the test thread
            outcome["error"] = err

    thread = threading.Thread(target=drive, daemon=True)
    thread.start()
    return thread, outcome


def kill_when(driver, ready, title: str, timeout_s: float = 400.0):
    """While the `driver` thread runs: once `ready()` is true, SIGKILL the first of our Ray's processes
    titled `title` (`ray_processes_of_this_process`). The killed process, or None if none was seen."""
    import signal

    deadline = time.time() + timeout_s
    while time.time() < deadline and driver.is_alive():
        if ready():
            workers = ray_processes_of_this_process(title)
            if workers:
                os.kill(workers[0].pid, signal.SIGKILL)
                return workers[0]
        time.sleep(0.05)
    return None


def node_spec(node_id: str, languages, is_leaf: bool = True, **extra):
    """A NodeSpec for a node trained outside a tree (train_node in a test): its id and (code, name) pairs."""
    from hql_ray.settings.records import NodeSpec

    return NodeSpec(node_id, node_id.split(".")[-1], node_id.split(".")[0] if "." in node_id else "", 0, None,
                    is_leaf, tuple(tuple(pair) for pair in languages), **extra)


def with_section(cfg, section: str, **values):
    """A copy of `cfg` with `values` set in one of its sections (cfg.train, cfg.eval, ...)."""
    import dataclasses

    return dataclasses.replace(cfg, **{section: dataclasses.replace(getattr(cfg, section), **values)})


def export_adapter(chain, out_dir, base_model_name_or_path):
    """ONE standard PEFT adapter dir from in-memory adapter states (their exact concatenation): what the saved
    chain's export (`export.export_saved_chain`) must equal."""
    from hql_ray.training.adapter_algebra import concat_adapters, frozen_shape
    from hql_ray.training.adapter_files import atomic_dir, save_tensors

    state = concat_adapters(chain)
    config = frozen_shape(state).to_peft(base_model_name_or_path=base_model_name_or_path, inference_mode=True)

    def write(tmp):
        config.save_pretrained(str(tmp))
        save_tensors(state.tensors, tmp / "adapter_model.safetensors")

    return atomic_dir(out_dir, write)


def pytest_collection_modifyitems(config, items):
    """`ondemand` tests (long, or covered by a faster test) run only with HQL_ONDEMAND_TESTS=1: CI's slow pass must end
    within its 90 minutes."""
    if os.environ.get("HQL_ONDEMAND_TESTS"):
        return
    skip = pytest.mark.skip(reason="on demand: HQL_ONDEMAND_TESTS=1 runs it (long on 2 cores)")
    for item in items:
        if "ondemand" in item.keywords:
            item.add_marker(skip)
