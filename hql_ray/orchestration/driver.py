"""The Ray driver: walks the tree, launching each node as soon as its parent is done.

Siblings run at the same time on separate slots (GPUs, or CPUs on a laptop). What a node starts from,
when it is ready and how many workers it gets is the run model's (`run_model.RunModel`, which the dry run
uses too); a launch runs as a Ray Train run, a warm worker's call or a Tune search (`_run`). A finished
node's adapter is saved by the keeper before the node is marked done (so `--resume` keeps it); the
driver only holds its object-store reference for the children. The manifest records every step.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Callable

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from hql_ray.orchestration import elastic, keeper, launch, preflight, run_start, search_state, stop, tune, warm
from hql_ray.orchestration.board import RunBoard
from hql_ray.orchestration.cluster import check_storage, detect_slots, init_ray
from hql_ray.orchestration.job import NodeJob, run_name
from hql_ray.orchestration.leaf_exports import LeafExports
from hql_ray.orchestration.run_model import RunModel
from hql_ray.orchestration.run_state import Launch, Run
from hql_ray.orchestration.watch import RunWatch
from hql_ray.outputs import results
from hql_ray.outputs.manifest import Manifest
from hql_ray.settings import search_space
from hql_ray.settings.config import TINY_BASES, Config
from hql_ray.settings.records import (Event, NodeDone, NodeFailed, NodeMetrics, NodeResources, NodeResult, NodeSpec,
                                      NodeStarted, RunFinished, RunStarted)
from hql_ray.settings.tree import load_tree
from hql_ray.training import modeling, tracking
from hql_ray.training.simulate import Simulation
from hql_ray.training.work import Reevaluate, Simulate, Train

log = logging.getLogger(__name__)


def last_error_line(err: BaseException) -> str:
    """The root cause of a worker failure: the last non-empty line of Ray's error text."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[-1][:500] if lines else type(err).__name__


class Driver:
    def __init__(self, cfg: Config, *, simulation: Simulation | None = None,
                 on_event: Callable[[Event], None] | None = None):
        self.cfg = cfg.with_absolute_paths()
        self.simulation = simulation
        self.on_event = on_event or (lambda event: None)
        self.run_dir = self.cfg.run_dir.absolute()
        self.tree = load_tree(self.cfg.tree.file, self.cfg.tree.levels)
        self.skipped = self.tree.skip_nodes(self.cfg.tree.skip)  # -sv: not trained in this run
        search_space.check_levels(self.cfg.tune, self.tree.levels)  # before Ray starts
        self.model = RunModel(self.cfg, self.tree)
        self.exports = LeafExports(self.model, self.run_dir, lambda event: self.on_event(event))
        self._owns_ray = False  # whether this driver started (or connected) Ray, and so shuts it down
        self._warm: warm.WarmPool | None = None  # runs one-worker nodes when resources.executor picks warm workers

    def storage_path(self) -> str:
        path = self.cfg.run.storage_path or str(self.run_dir / "storage")
        return path if "://" in path else str(Path(path).absolute())

    # ---- start ------------------------------------------------------------------------------------
    def start(self) -> Run:
        """Everything before the first node: checks, the run folder, Ray, slots, the board, the keeper."""
        cfg = self.cfg
        sizes = preflight.check(cfg, self.tree, simulation=self.simulation, skipped=self.skipped)
        manifest = run_start.open_manifest(cfg, self.tree, self.skipped)  # (nothing written if refused)
        if cfg.model.base in TINY_BASES and not self.simulation:
            if not modeling.tiny_base_built(cfg):
                log.warning("building the demo's base once: the tiny mT5 pre-trained on the sample's training split "
                            "(about 1-2 minutes on one core; later runs reuse %s)", cfg.models_dir)
            modeling.base_model_path(cfg)  # build the tiny model once here rather than racing in every worker
        # TensorBoard's config/tree text; the MLflow parent run (its id reaches the nodes in cfg.tracking).
        self.tracking = tracking.RunTracking.open(cfg, self.tree, self.run_dir, enabled=self.simulation is None)
        self._owns_ray = init_ray(cfg)
        stop.on_sigterm()  # (again: starting Ray installed its own handler)
        slots = detect_slots(cfg)
        storage = self.storage_path()
        check_storage(storage, explicit=bool(cfg.run.storage_path))
        # Pinned to the driver's node: on a cluster, losing a worker machine must not take the board with it.
        here = ray.get_runtime_context().get_node_id()
        board = RunBoard.options(num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False)).remote()
        searched = any(search_space.searches_level(cfg, level) for level in self.tree.levels)
        run = Run(manifest, slots, sizes, storage, board, RunWatch(board, cfg.resources.wait_warning_s, self.on_event),
                  keeper.start_keeper(here), here, search_state.start(board, here) if searched else None)
        if not self.simulation and warm.wanted(cfg.resources.executor, slots, storage):
            self._warm = warm.WarmPool(here, threads=max(1, int(cfg.resources.cpus_per_worker)))
        run_start.restore_done(run, self.run_dir, self.skipped, cfg.eval.generate and not self.simulation,
                               self.on_event)
        self.exports.restore(manifest, here, export=not self.simulation)  # kept nodes: their languages, exports
        run.refs.load_saved(here, self.run_dir, manifest, self.model.needed(manifest.statuses, run.failed, run.evaluate))
        manifest.set_run_status("running", slots={"total": slots.total, "gpu": slots.use_gpu, "cuda": slots.real_cuda})
        self.on_event(RunStarted(str(self.run_dir), slots.total, slots.use_gpu, len(self.tree.nodes), board))
        return run

    # ---- the walk -----------------------------------------------------------------------------------
    def run(self) -> Manifest:
        run = self.start()
        pool = ThreadPoolExecutor(max_workers=max(run.slots.total, 1), thread_name_prefix="node")
        try:
            while True:
                self._launch_ready(pool, run)
                self._launch_evaluations(pool, run)
                elastic.offer_slots(self.model, run)
                if not run.running:
                    break
                done, _ = wait(list(run.running), timeout=1.0, return_when=FIRST_COMPLETED)
                for future in done:
                    self._finish(run, future, run.running.pop(future), pool)
                    run.refs.keep_only(self.model.needed(run.manifest.statuses, run.failed, run.evaluate))
                run.watch.tick()
        except BaseException as err:
            # Ctrl-C, SIGTERM or a driver error: finished nodes are already persisted. On SIGTERM the nodes in
            # flight first write a checkpoint (bounded wait); their next launch continues from their latest.
            # Shutting Ray down (or disconnecting from a cluster, which ends this job) stops every run in
            # flight and frees their resources; the node threads then return on their own.
            if isinstance(err, stop.Stopped):
                stop.checkpoint_in_flight(run.board, {launch.node for launch in run.running.values()
                                                      if not launch.is_evaluation},
                                          self.cfg.resources.stop_checkpoint_wait_s)
            run.manifest.set_run_status("interrupted", finished_at=time.time())
            pool.shutdown(wait=False, cancel_futures=True)
            if self._owns_ray:
                ray.shutdown()
            raise
        pool.shutdown(wait=True)
        if self._warm is not None:
            self._warm.shutdown()
        run.watch.release_all()  # what the last stopped trials left, before the run says it is done
        return self.finish(run)

    def finish(self, run: Run) -> Manifest:
        manifest = run.manifest
        pending = [n for n, v in manifest.nodes.items() if v.status not in ("done", "skipped")]
        if not self.simulation:
            results.write_results(manifest, self.tree, self.run_dir)
        manifest.set_run_status("done" if not pending else "failed", finished_at=time.time())
        self.tracking.close(manifest, self.run_dir)  # manifest, results, model cards: the MLflow parent's artifacts
        self.on_event(RunFinished(sorted(run.failed), pending))
        return manifest

    def _job(self, run: Run, node_id: str, workers: int, work, chain: list[str]) -> NodeJob:
        ancestors = [a.id for a in self.tree.ancestors(node_id)]
        spec = NodeSpec.of(self.tree.nodes[node_id], run.sizes[node_id],
                           tracking.step_offset(ancestors, run.manifest.nodes))
        return NodeJob(
            cfg=self.cfg, node=spec, workers=workers, parent_refs=run.refs.of(chain),
            name=run_name(node_id, run.manifest.run_id_of(node_id), work), slots=run.slots, storage=run.storage,
            board=run.board, work=work, max_failures=self.cfg.resources.max_failures, keeper=run.keeper,
            adapter_path=str(self.run_dir / "nodes" / node_id / "adapter"), searches=run.searches)

    def _launch_ready(self, pool: ThreadPoolExecutor, run: Run) -> None:
        ready = self.model.ready(run.manifest.statuses, run.in_flight, run.failed)
        work = Simulate(self.simulation) if self.simulation else Train()
        for node_id, workers in self.model.allocate(ready, run.sizes, run.free_slots, run.training).items():
            job = self._job(run, node_id, workers, work, self.model.chain(node_id))
            executor = self._executor(job)
            run.manifest.update(node_id, status="running", started_at=time.time(), finished_at=None,
                                resources=NodeResources(workers, run.slots.use_gpu, executor))
            self.on_event(NodeStarted(node_id, workers, executor))
            run.running[pool.submit(self._run, job, executor)] = Launch(node_id, workers, job, executor)

    def _launch_evaluations(self, pool: ThreadPoolExecutor, run: Run) -> None:
        """--resume: score again, one worker each, the done nodes whose evaluation failed (slots allowing)."""
        for node_id in sorted(run.evaluate):
            if run.free_slots < 1:
                return
            job = self._job(run, node_id, 1, Reevaluate(), list(self.model.facts[node_id].model_chain))
            run.evaluate.discard(node_id)
            executor = self._executor(job)
            run.running[pool.submit(self._run, job, executor)] = Launch(node_id, 1, job, executor)

    def _executor(self, job: NodeJob) -> str:
        """Who runs the node: "tune" (a searched level), "warm" (a warm worker) or "ray-train"."""
        if isinstance(job.work, (Train, Simulate)) and search_space.searches_level(self.cfg, job.node.level):
            return "tune"
        return "warm" if self._warm is not None and job.workers == 1 else "ray-train"

    def _run(self, job: NodeJob, executor: str) -> NodeResult:
        if executor == "tune":
            return tune.search_node(self.cfg, job)
        if executor == "warm":
            return self._warm.fit(job)
        return launch.fit_node(job)

    # ---- a launch's end -----------------------------------------------------------------------------
    def _finish(self, run: Run, future: Future, done: Launch, pool: ThreadPoolExecutor) -> None:
        if done.is_evaluation:
            return self._finish_evaluation(run, future, done.node)
        node_id, manifest = done.node, run.manifest
        entry = manifest.nodes[node_id]
        attempts = entry.attempts + max(ray.get(run.board.attempts.remote(node_id)), 1)
        try:
            out: NodeResult = future.result()
        except Exception as err:  # noqa: BLE001 - a failed node must not stop its siblings
            run.failed.add(node_id)
            manifest.update(node_id, status="failed", finished_at=time.time(), attempts=attempts,
                            error=run.watch.explain(node_id, f"{type(err).__name__}: {err}")[:4000])
            self.on_event(NodeFailed(node_id, run.watch.explain(node_id, last_error_line(err))))
            run.keeper.drop.remote(done.job.name)  # what a failed attempt may have handed over
            elastic.ended(run, node_id)
            return
        if out.paused_at is not None:  # resources.elastic: it goes on from its checkpoint on more workers
            job = elastic.resized_job(run, done, out, self.on_event)
            run.running[pool.submit(self._run, job, "ray-train")] = Launch(node_id, job.workers, job, "ray-train")
            return
        elastic.ended(run, node_id)
        ref = ray.get(run.keeper.take.remote(done.job.name))[0]  # saved by the keeper before "done"
        if self.model.facts[node_id].hands_on:
            run.refs.add(node_id, ref)
        del ref
        resources = replace(entry.resources or NodeResources(), hosts=sorted({w.node_ip for w in out.workers}),
                            gpu_ids=sorted({g for w in out.workers for g in w.gpu_ids}, key=str))
        if out.trials:
            run.watch.release_all()  # the search's stopped trials free their slots before children start
        adapter = str(Path("nodes") / node_id / "adapter")
        # Exports run on a real run, and on a dry run whose adapters have the real shapes.
        adapters = {**{n: v.adapter for n, v in manifest.nodes.items()}, node_id: adapter}
        real = not self.simulation or self.simulation.adapters == "real"
        exports = self.exports.export(node_id, run.head, adapters, out.metrics) if real else {}
        node_export = self.exports.export_node(node_id, run.head, adapters, out.metrics) if real else None
        manifest.update(node_id, status="done", finished_at=time.time(), attempts=attempts, resources=resources,
                        adapter=adapter, checksum=out.kept_checksum, received_checksums=out.received_checksums,
                        handed_from=self.model.chain(node_id), metrics=out.metrics, history=out.history,
                        trials=out.trials, exported=sorted(exports), exports=exports, node_export=node_export,
                        trained_languages=self.tree.nodes[node_id].codes)
        self.on_event(NodeDone(node_id, out.metrics))

    def _finish_evaluation(self, run: Run, future: Future, node_id: str) -> None:
        """A re-evaluation's scores replace the error; the node, its adapter and its exports stay as they were."""
        entry = run.manifest.nodes[node_id]
        metrics = entry.metrics or NodeMetrics()
        try:
            scores = future.result().metrics
            metrics.languages, metrics.evaluation_error = scores.languages, scores.evaluation_error
        except Exception as err:  # noqa: BLE001 - the node stays done; a later --resume tries again
            metrics.evaluation_error = f"{type(err).__name__}: {last_error_line(err)}"
        run.manifest.update(node_id, metrics=metrics)
        self.exports.write_cards(node_id, entry, metrics)  # the model cards carry the scores
        log.warning("node %s: %s", node_id, f"evaluation failed again: {metrics.evaluation_error}"
                    if metrics.evaluation_error else "evaluated again: " + "; ".join(metrics.chrf_means()))
