"""The Ray driver: walks the tree, launching each node as a Ray Train run as soon as its parent is done.

Siblings run at the same time on separate slots (GPUs, or CPUs on a laptop). Each finished node's
adapter is persisted (so `--resume` skips it) and put in the object store once; children receive
the refs of their ancestors' adapters. The manifest records every step as it happens.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from hql_ray import handoff, launch, preflight, results, tune
from hql_ray.board import RunBoard
from hql_ray.config import Config
from hql_ray.errors import ConfigError
from hql_ray.manifest import Manifest
from hql_ray.ray_worker import from_wire, to_wire
from hql_ray.launch import Slots
from hql_ray.scheduling import allocate_workers
from hql_ray.tree import LanguageTree, load_tree
from hql_ray.watch import RunWatch

log = logging.getLogger(__name__)


@dataclass
class RunState:
    """The driver's view: finished adapters (refs + states), what runs, what waits."""

    refs: dict[str, ray.ObjectRef] = field(default_factory=dict)  # node -> ref of its own adapter
    states: dict[str, dict] = field(default_factory=dict)  # node -> its own adapter (for export)
    running: dict[Future, tuple[str, int]] = field(default_factory=dict)
    failed: set[str] = field(default_factory=set)


def init_ray(cfg: Config) -> bool:
    """Connect to (or start) Ray; True if this call did, so the driver also shuts it down."""
    # Faster turn-around between nodes; the controller reads it from the driver's environment.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    if ray.is_initialized():
        return False
    if cfg.resources.address:
        ray.init(address=cfg.resources.address, log_to_driver=False)
    else:
        # A local Ray on one machine: no spot preemption to watch and no dashboard to feed, so spare
        # the extra actor processes Ray Train would start for every node.
        os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
        os.environ.setdefault("RAY_TRAIN_METRICS_ENABLED", "0")
        ray.init(address="local", num_gpus=cfg.resources.num_gpus, include_dashboard=False, log_to_driver=False)
    return True


def detect_slots(cfg: Config) -> Slots:
    resources = ray.cluster_resources()
    cluster_gpus = int(resources.get("GPU", 0))
    wanted = cfg.resources.num_gpus
    if wanted is not None and wanted > cluster_gpus:
        raise ConfigError(f"--num-gpus {wanted} but the Ray cluster has {cluster_gpus} GPU(s)")
    gpus = cluster_gpus if wanted is None else wanted
    if gpus > 0:
        cuda = _workers_have_cuda()
        # Logical GPU slots share the CPUs: a CPU per worker would cap concurrency at the CPU count.
        return Slots(gpus, True, cuda, cfg.resources.cpus_per_worker if cuda else 0.01)
    cpus = resources.get("CPU", 1)
    per = cfg.resources.cpus_per_worker
    total = cfg.resources.num_cpu_slots or max(1, int(cpus // per))
    return Slots(total, False, False, per)


_cuda_probe: bool | None = None


def _workers_have_cuda() -> bool:
    """Logical GPU slots (tests, laptops) have no CUDA behind them; ask a worker once."""
    global _cuda_probe
    if _cuda_probe is None:

        @ray.remote(num_gpus=1, num_cpus=0)
        def probe():
            import torch

            return torch.cuda.is_available()

        _cuda_probe = bool(ray.get(probe.remote()))
    return _cuda_probe


def check_storage(storage_path: str, explicit: bool) -> None:
    """A multi-node run needs storage every node can reach (S3/GCS URI or a shared mount)."""
    alive = [n for n in ray.nodes() if n.get("Alive")]
    if len(alive) > 1 and "://" not in storage_path and not explicit:
        raise ConfigError(
            f"this Ray cluster has {len(alive)} nodes but run.storage_path is the local folder {storage_path}; "
            "set run.storage_path to a URI every node can reach (s3://bucket/path) or to a shared NFS mount"
        )


def last_error_line(err: BaseException) -> str:
    """The root cause of a worker failure: the last non-empty line of Ray's error text."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[-1][:500] if lines else type(err).__name__


class Driver:
    def __init__(self, cfg: Config, *, simulate: dict | None = None, on_event: Callable[[str, dict], None] | None = None):
        self.cfg = cfg.with_absolute_paths()
        cfg = self.cfg
        self.simulate = simulate
        self.on_event = on_event or (lambda kind, info: None)
        self.run_dir = cfg.run_dir.absolute()
        self.tree: LanguageTree = load_tree(cfg.tree.file, cfg.tree.levels)
        tune.parse_tune(cfg.tune, self.tree.levels)  # a bad tune: section fails here, before Ray starts
        self._launches = 0
        self._lock = threading.Lock()

    # ---- set-up ---------------------------------------------------------------------------------
    def storage_path(self) -> str:
        if self.cfg.run.storage_path:
            path = self.cfg.run.storage_path
            return path if "://" in path else str(Path(path).absolute())
        return str(self.run_dir / "storage")

    def open_manifest(self) -> Manifest:
        path = self.run_dir / "manifest.json"
        if path.exists():
            old = Manifest.load(path)
            if not self.cfg.run.resume:
                done = [n for n, v in old.nodes.items() if v["status"] == "done"]
                raise ConfigError(
                    f"run folder {self.run_dir} already holds a run ({len(done)} node(s) done); "
                    "add --resume to continue it, or choose another run name (-sn)"
                )
            if set(old.nodes) != set(self.tree.nodes):
                raise ConfigError(f"--resume: {path} was made for a different tree ({old.data['tree']})")
            return old
        return Manifest.create(path, self.tree, self.cfg.to_dict(), self.cfg.run_name)

    def node_payload(self, node_id: str, sizes: dict[str, int]) -> dict:
        node = self.tree.nodes[node_id]
        return {
            "id": node.id,
            "name": node.name,
            "level": node.level,
            "depth": node.depth,
            "parent": node.parent,
            "is_leaf": not node.children,
            "languages": [[lang.code, lang.name] for lang in node.languages],
            "examples": sizes[node.id],
        }

    def chain_ids(self, node_id: str) -> list[str]:
        """Whose adapters a node starts from: all ancestors (stack/merge/fft-last) or the parent (continue)."""
        ancestors = [a.id for a in self.tree.ancestors(node_id)]
        if self.cfg.model.handoff == "continue" or self.cfg.model.mode == "fft":
            return ancestors[-1:]
        return ancestors

    # ---- resume -----------------------------------------------------------------------------------
    def restore_done(self, manifest: Manifest, state: RunState) -> None:
        """Done nodes whose adapter is intact are kept; anything else is redone from scratch."""
        for node_id, entry in manifest.nodes.items():
            if entry["status"] == "done" and entry.get("adapter"):
                adapter_dir = self.run_dir / entry["adapter"]
                try:
                    st = handoff.load_adapter_state(adapter_dir)
                    if handoff.state_checksum(st) != entry.get("checksum"):
                        raise ValueError("checksum mismatch")
                except Exception as err:  # noqa: BLE001 - any damage means: train again
                    log.warning("node %s: saved adapter unusable (%s); it will be retrained", node_id, err)
                    manifest.update(node_id, status="pending", adapter=None)
                    continue
                state.states[node_id] = st
                state.refs[node_id] = ray.put(to_wire(st))
                self.on_event("skipped", {"node": node_id})
            elif entry["status"] != "pending":
                manifest.update(node_id, status="pending", started_at=None, finished_at=None)

    # ---- the walk ---------------------------------------------------------------------------------
    def run(self) -> Manifest:
        cfg = self.cfg
        sizes = preflight.check(cfg, self.tree, simulate=self.simulate)
        if cfg.model.base == "tiny" and not self.simulate:
            # Build the tiny model once here rather than racing in every worker.
            from hql_ray import modeling
            from hql_ray.node import cache_dir_for

            modeling.resolve_base_model("tiny", cache_dir_for(cfg) / "models")
        owns_ray = init_ray(cfg)
        slots = detect_slots(cfg)
        storage = self.storage_path()
        check_storage(storage, explicit=bool(cfg.run.storage_path))
        manifest = self.open_manifest()
        manifest.set_run_status("running", slots={"total": slots.total, "gpu": slots.use_gpu, "cuda": slots.real_cuda})
        # Pinned to the driver's node: on a cluster, losing a worker machine must not take the board with it.
        here = ray.get_runtime_context().get_node_id()
        board = RunBoard.options(num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False)).remote()
        state = RunState()
        self.watch = RunWatch(board, cfg.resources.wait_warning_s, self.on_event)
        self.restore_done(manifest, state)
        self.on_event("run_started", {"run_dir": str(self.run_dir), "slots": slots.total, "gpu": slots.use_gpu,
                                      "nodes": len(self.tree.nodes), "board": board})

        pool = ThreadPoolExecutor(max_workers=max(slots.total, 1), thread_name_prefix="node")
        try:
            while True:
                self._launch_ready(pool, manifest, state, slots, sizes, storage, board)
                if not state.running:
                    break
                done, _ = wait(list(state.running), timeout=1.0, return_when=FIRST_COMPLETED)
                for future in done:
                    node_id, _workers = state.running.pop(future)
                    self._finish(future, node_id, manifest, state, board)
                self.watch.tick()
        except BaseException:
            # Ctrl-C or a driver error: finished nodes are already persisted; say so and get out
            # without waiting for the nodes in flight (they are redone on --resume). Shutting Ray
            # down (or disconnecting from a cluster, which ends this job) stops every run in flight
            # and frees their resources; the node threads then return on their own.
            manifest.set_run_status("interrupted", finished_at=time.time())
            pool.shutdown(wait=False, cancel_futures=True)
            if owns_ray:
                ray.shutdown()
            raise
        pool.shutdown(wait=True)
        self.watch.release_all()  # what the last stopped trials left, before the run says it is done

        pending = [n for n, v in manifest.nodes.items() if v["status"] != "done"]
        if not self.simulate:
            results.write_results(manifest, self.tree, self.run_dir)
        manifest.set_run_status("done" if not pending else "failed", finished_at=time.time())
        self.on_event("run_finished", {"failed": sorted(state.failed), "not_done": pending})
        return manifest

    def _ready(self, manifest: Manifest, state: RunState) -> list[str]:
        running = {node_id for node_id, _ in state.running.values()}
        unfinished_depths = {self.tree.nodes[n].depth for n, v in manifest.nodes.items() if v["status"] != "done"}
        ready = []
        for node_id, node in self.tree.nodes.items():
            entry = manifest.nodes[node_id]
            if entry["status"] != "pending" or node_id in running or node_id in state.failed:
                continue
            if self.cfg.resources.level_barrier and any(d < node.depth for d in unfinished_depths):
                continue
            if node.parent is None or manifest.nodes[node.parent]["status"] == "done":
                ready.append(node_id)
        return ready

    def _launch_ready(self, pool, manifest, state, slots, sizes, storage, board) -> None:
        ready = self._ready(manifest, state)
        busy = sum(w for _, w in state.running.values())
        alloc = allocate_workers(
            [(n, sizes[n]) for n in ready],
            slots.total - busy,
            self.cfg.resources.max_workers_per_node,
            self.cfg.resources.min_examples_per_worker,
        )
        for node_id, workers in alloc.items():
            payload = self.node_payload(node_id, sizes)
            refs = [state.refs[a] for a in self.chain_ids(node_id)]
            self._launches += 1
            name = f"{node_id}.launch{self._launches}.{int(time.time())}"
            manifest.update(node_id, status="running", started_at=time.time(), finished_at=None,
                            resources={"workers": workers, "gpu": slots.use_gpu})
            self.on_event("node_started", {"node": node_id, "workers": workers})
            future = pool.submit(self._fit_node, payload, workers, refs, name, slots, storage, board)
            state.running[future] = (node_id, workers)

    def _fit_node(self, payload, workers, refs, name, slots, storage, board) -> dict:
        if self.simulate is None and tune.searches_level(self.cfg, payload["level"]):
            return tune.search_node(self.cfg, payload, workers, refs, name, slots, storage, board)
        return launch.fit_node(self.cfg.to_dict(), payload, workers, refs, name, slots, storage, board,
                               simulate=self.simulate, max_failures=self.cfg.resources.max_failures)

    def _finish(self, future: Future, node_id: str, manifest: Manifest, state: RunState, board) -> None:
        attempts = ray.get(board.attempts.remote(node_id))
        entry = manifest.nodes[node_id]
        try:
            out = future.result()
        except Exception as err:  # noqa: BLE001 - a failed node must not stop its siblings
            state.failed.add(node_id)
            manifest.update(node_id, status="failed", finished_at=time.time(),
                            attempts=entry["attempts"] + max(attempts, 1),
                            error=self.watch.explain(node_id, f"{type(err).__name__}: {err}")[:4000])
            self.on_event("node_failed", {"node": node_id, "error": self.watch.explain(node_id, last_error_line(err))})
            return
        wire = out["adapter"]
        own = from_wire(wire)
        adapter_rel = Path("nodes") / node_id / "adapter"
        handoff.save_adapter_state(own, self.run_dir / adapter_rel)  # persisted before "done"
        state.states[node_id] = own
        state.refs[node_id] = ray.put(wire)  # once; every child gets this ref
        workers = out.get("workers", [])
        resources = dict(entry.get("resources") or {})
        resources["gpu_ids"] = sorted({g for w in workers for g in w.get("gpu_ids", [])}, key=str)
        resources["hosts"] = sorted({w.get("node_ip", "") for w in workers})
        if out.get("trials"):
            self.watch.release_all()  # the search's stopped trials free their slots before children start
        exported = [] if self.simulate else self._export_leaves(node_id, state)
        manifest.update(
            node_id,
            status="done",
            finished_at=time.time(),
            attempts=entry["attempts"] + max(attempts, 1),
            resources=resources,
            adapter=str(adapter_rel),
            checksum=handoff.state_checksum(own),
            received_checksums=out.get("received_checksums", []),
            handed_from=self.chain_ids(node_id),
            metrics=out.get("metrics"),
            history=out.get("history"),
            trials=out.get("trials"),
            exported=exported,
        )
        self.on_event("node_done", {"node": node_id, "metrics": out.get("metrics") or {}})

    def _export_leaves(self, node_id: str, state: RunState) -> list[str]:
        """Languages whose last node this is get final/<code>/: one standard PEFT adapter (or full model)."""
        codes = [lang.code for lang in self.tree.languages if self.tree.leaf_for(lang.code).id == node_id]
        if not codes:
            return []
        chain = [state.states[a] for a in self.chain_ids(node_id)] + [state.states[node_id]]
        for code in codes:
            out_dir = self.run_dir / "final" / code
            if self.cfg.model.mode == "fft":
                results.export_full_model(self.cfg, chain[-1], out_dir)
            else:
                if self.cfg.model.handoff == "continue":
                    chain = chain[-1:]
                handoff.export_adapter(chain, out_dir, results.base_model_reference(self.cfg))
        return codes

