"""The Ray driver: walks the tree, launching each node as a Ray Train run as soon as its parent is done.

Siblings run at the same time on separate slots (GPUs, or CPUs on a laptop). Each finished node's
adapter is persisted (so `--resume` skips it) and put in the object store once; children receive
the refs of their ancestors' adapters. The manifest records every step as it happens.
"""

from __future__ import annotations

import json
import logging
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from hql_ray.outputs import export, export_modes, model_card, progress, results
from hql_ray.training import handoff, reevaluate, tracking
from hql_ray.orchestration import keeper, launch, preflight, tune, warm
from hql_ray.settings import search_space
from hql_ray.orchestration.board import RunBoard
from hql_ray.orchestration.cluster import check_storage, detect_slots, init_ray
from hql_ray.settings.config import TINY_BASES, Config
from hql_ray.data.dataset import make_pair
from hql_ray.settings.errors import ConfigError
from hql_ray.orchestration.launch import NodeJob, Slots
from hql_ray.outputs.manifest import Manifest
from hql_ray.outputs.progress import chrf_means
from hql_ray.settings.records import AdapterState, NodeResult, NodeSpec, RunEvent
from hql_ray.orchestration.ray_worker import from_wire
from hql_ray.orchestration.scheduling import allocate_workers, max_workers
from hql_ray.settings.tree import LanguageTree, load_tree
from hql_ray.orchestration.watch import RunWatch

log = logging.getLogger(__name__)


@dataclass
class Run:
    """One walk of the tree: its record, what the cluster offers, and the driver's view of the nodes."""

    manifest: Manifest
    slots: Slots
    sizes: dict[str, int]  # node -> training examples
    storage: str  # Ray Train storage path (absolute, or a URI)
    board: Any  # the RunBoard actor
    watch: RunWatch
    # node -> ref of its own adapter in the object store, kept while a node still to run starts from it.
    # The driver holds no adapter itself: they are on disk (nodes/<id>/adapter), exports read them there.
    refs: dict[str, ray.ObjectRef] = field(default_factory=dict)
    running: dict[Future, tuple[str, int]] = field(default_factory=dict)  # -> (node, workers)
    failed: set[str] = field(default_factory=set)
    # --resume: done nodes whose evaluation failed, to be evaluated again (not retrained); those in flight.
    evaluate: set[str] = field(default_factory=set)
    evaluating: set[str] = field(default_factory=set)
    keeper: Any = None  # the AdapterKeeper actor: finished nodes' adapters, saved and held for the children
    head: str = ""  # Ray node id of the driver's machine (the run folder): where the keeper and exports run

    @property
    def busy_slots(self) -> int:
        return sum(workers for _, workers in self.running.values())


def _check_only(path: str, checksum: str | None) -> None:
    """keeper.check_saved without sending the adapter back (run on the head by `keeper.on_head`)."""
    keeper.check_saved(path, checksum)


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
        self.skipped = self.tree.skip_nodes(cfg.tree.skip)  # -sv: not trained in this run
        search_space.check_levels(cfg.tune, self.tree.levels)  # before Ray starts
        self._launches = 0
        self._owns_ray = False  # whether this driver started (or connected) Ray, and so shuts it down
        self._warm: warm.WarmPool | None = None  # runs one-worker nodes when resources.executor picks warm workers

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
            if not self.cfg.run.resume and not self.skipped:
                done = [n for n, v in old.nodes.items() if v.status == "done"]
                raise ConfigError(
                    f"run folder {self.run_dir} already holds a run ({len(done)} node(s) done); "
                    "add --resume to continue it, or choose another run name (-sn)"
                )
            if set(old.nodes) != set(self.tree.nodes):
                raise ConfigError(f"--resume: {path} was made for a different tree ({old.data['tree']})")
            old.upgrade(self.tree)
            if not self.cfg.run.resume:  # -sv without --resume: skipped nodes are reused, the others retrained
                for node_id in set(old.nodes) - self.skipped:
                    old.update(node_id, status="pending", adapter=None)
            return old
        return Manifest.create(path, self.tree, self.cfg.to_dict(), self.cfg.run_name)

    def node_spec(self, node_id: str, sizes: dict[str, int]) -> NodeSpec:
        return NodeSpec.of(self.tree.nodes[node_id], sizes[node_id])

    def chain_ids(self, node_id: str) -> list[str]:
        """Whose adapters a node starts from (the hand-off rule: `handoff.handed_on`)."""
        ancestors = [a.id for a in self.tree.ancestors(node_id)]
        return handoff.handed_on(ancestors, self.cfg.model.handoff, self.cfg.model.mode)

    def start(self) -> Run:
        """Everything before the first node: checks, Ray, slots, the manifest, the board."""
        cfg = self.cfg
        sizes = preflight.check(cfg, self.tree, simulate=self.simulate, skipped=self.skipped)
        if cfg.model.base in TINY_BASES and not self.simulate:
            from hql_ray.training import modeling

            if cfg.model.base == modeling.TINY_PRETRAINED and not (cfg.models_dir / modeling.TINY_PRETRAINED_DIR_NAME).is_dir():
                log.warning("building the demo's base once: the tiny mT5 pre-trained on the sample's training split "
                            "(about 1-2 minutes on one core; later runs reuse %s)", cfg.models_dir)
            modeling.base_model_path(cfg)  # build the tiny model once here rather than racing in every worker
        manifest = self.open_manifest()  # an existing run folder is refused before Ray starts
        self.mark_skipped(manifest)
        # TensorBoard's config/tree text; the MLflow parent run (its id reaches the nodes in cfg.tracking).
        self.tracking = tracking.RunTracking.open(cfg, self.tree, self.run_dir, enabled=self.simulate is None)
        self._owns_ray = init_ray(cfg)
        slots = detect_slots(cfg)
        storage = self.storage_path()
        check_storage(storage, explicit=bool(cfg.run.storage_path))
        manifest.set_run_status("running", slots={"total": slots.total, "gpu": slots.use_gpu, "cuda": slots.real_cuda})
        # Pinned to the driver's node: on a cluster, losing a worker machine must not take the board with it.
        here = ray.get_runtime_context().get_node_id()
        board = RunBoard.options(num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False)).remote()
        run = Run(manifest, slots, sizes, storage, board, RunWatch(board, cfg.resources.wait_warning_s, self.on_event))
        run.head, run.keeper = here, keeper.start_keeper(here)
        if not self.simulate and warm.wanted(cfg.resources.executor, slots, storage):
            self._warm = warm.WarmPool(here, threads=max(1, int(cfg.resources.cpus_per_worker)))
        self.restore_done(run)
        self.on_event(RunEvent.RUN_STARTED, {"run_dir": str(self.run_dir), "slots": slots.total,
                                             "gpu": slots.use_gpu, "nodes": len(self.tree.nodes), "board": board})
        return run

    # ---- resume, and nodes skipped (-sv) ------------------------------------------------------------
    def mark_skipped(self, manifest: Manifest) -> None:
        """A skipped node that a node of this run starts from must be done in the run folder already (its
        adapter is read from there, as with --resume); any other skipped node is marked "skipped"."""
        for node_id in self.tree.needed_skips(self.skipped):
            entry = manifest.nodes[node_id]
            if entry.status != "done" or not entry.adapter or not (self.run_dir / entry.adapter).is_dir():
                raise ConfigError(f"tree.skip (-sv): node {node_id} is skipped, but nodes below it train in this run "
                                  f"and {self.run_dir} holds no finished adapter of it; train it first "
                                  "(leave it out of -sv) or skip its descendants too")
        for node_id in self.skipped:
            if manifest.nodes[node_id].status != "done":
                manifest.update(node_id, status="skipped")

    def restore_done(self, run: Run) -> None:
        """Done nodes whose adapter is intact are kept; anything else is redone from scratch."""
        manifest = run.manifest
        for node_id, entry in manifest.nodes.items():
            if entry.status == "done" and entry.adapter:
                adapter_dir = self.run_dir / entry.adapter
                try:  # read and checked on the head by a task: the driver holds no adapter
                    keeper.on_head(run.head, _check_only, str(adapter_dir), entry.checksum)
                except Exception as err:  # noqa: BLE001 - any damage means: train again
                    if node_id in self.skipped:
                        raise ConfigError(f"tree.skip (-sv): the saved adapter of skipped node {node_id} is unusable "
                                          f"({err}); train it again (leave it out of -sv)") from err
                    log.warning("node %s: saved adapter unusable (%s); it will be retrained", node_id, err)
                    manifest.update(node_id, status="pending", adapter=None)
                    continue
                # verified; put in the object store below only if a node still to run needs it
                self.on_event(RunEvent.SKIPPED, {"node": node_id})
                if (entry.metrics or {}).get("evaluation_error") and self.cfg.eval.generate and not self.simulate:
                    log.warning("node %s: its evaluation failed in the earlier run (%s); evaluating it again",
                                node_id, entry.metrics["evaluation_error"])
                    run.evaluate.add(node_id)
            elif node_id in self.skipped:  # -sv, not done: marked "skipped" (mark_skipped), never launched
                self.on_event(RunEvent.SKIPPED, {"node": node_id})
            elif entry.status != "pending":
                manifest.update(node_id, status="pending", started_at=None, finished_at=None)

        for node_id in sorted(self._needed_refs(run)):
            run.refs[node_id] = keeper.load_saved(run.head, self.run_dir / manifest.nodes[node_id].adapter)

    def _needed_refs(self, run: Run) -> set[str]:
        """Done nodes whose adapters a node that may still run starts from (not one below a failed node)."""
        nodes = run.manifest.nodes
        needed: set[str] = set()
        for node_id, entry in nodes.items():
            if entry.status in ("done", "failed", "skipped") or node_id in run.failed:
                continue
            if any(a.id in run.failed for a in self.tree.ancestors(node_id)):
                continue
            needed.update(a for a in self.chain_ids(node_id) if nodes[a].status == "done")
        for node_id in run.evaluate:
            needed.update(self._evaluation_chain(node_id))
        return needed

    def _evaluation_chain(self, node_id: str) -> list[str]:
        """Whose adapters a re-evaluation loads: the node's trained model's parents, then the node itself."""
        return reevaluate.evaluation_parents(self.chain_ids(node_id), self.cfg) + [node_id]

    def _release_refs(self, run: Run) -> None:
        """Let the object store free the adapters no node still to run needs (running nodes hold their own refs)."""
        needed = self._needed_refs(run)
        for node_id in [n for n in run.refs if n not in needed]:
            del run.refs[node_id]

    # ---- the walk ---------------------------------------------------------------------------------
    def run(self) -> Manifest:
        run = self.start()
        pool = ThreadPoolExecutor(max_workers=max(run.slots.total, 1), thread_name_prefix="node")
        try:
            while True:
                self._launch_ready(pool, run)
                self._launch_evaluations(pool, run)
                if not run.running:
                    break
                done, _ = wait(list(run.running), timeout=1.0, return_when=FIRST_COMPLETED)
                for future in done:
                    node_id, _workers = run.running.pop(future)
                    if node_id in run.evaluating:
                        self._finish_evaluation(run, future, node_id)
                    else:
                        self._finish(run, future, node_id)
                    self._release_refs(run)
                run.watch.tick()
        except BaseException:
            # Ctrl-C or a driver error: finished nodes are already persisted; say so and get out
            # without waiting for the nodes in flight (they are redone on --resume). Shutting Ray
            # down (or disconnecting from a cluster, which ends this job) stops every run in flight
            # and frees their resources; the node threads then return on their own.
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
        if not self.simulate:
            results.write_results(manifest, self.tree, self.run_dir)
        manifest.set_run_status("done" if not pending else "failed", finished_at=time.time())
        self.tracking.close(manifest, self.run_dir)  # manifest, results, model cards: the MLflow parent's artifacts
        self.on_event(RunEvent.RUN_FINISHED, {"failed": sorted(run.failed), "not_done": pending})
        return manifest

    def _ready(self, run: Run) -> list[str]:
        nodes = run.manifest.nodes
        running = {node_id for node_id, _ in run.running.values()}
        unfinished_depths = {self.tree.nodes[n].depth for n, v in nodes.items() if v.status not in ("done", "skipped")}
        ready = []
        for node_id, node in self.tree.nodes.items():
            if nodes[node_id].status != "pending" or node_id in running or node_id in run.failed:
                continue
            if self.cfg.resources.level_barrier and any(d < node.depth for d in unfinished_depths):
                continue
            if node.parent is None or nodes[node.parent].status == "done":
                ready.append(node_id)
        return ready

    def _launch_ready(self, pool: ThreadPoolExecutor, run: Run) -> None:
        ready = self._ready(run)
        alloc = allocate_workers(
            [(n, run.sizes[n]) for n in ready],
            run.slots.total - run.busy_slots,
            max_workers(self.cfg),
            self.cfg.resources.min_examples_per_worker,
        )
        for node_id, workers in alloc.items():
            self._launches += 1
            job = NodeJob(
                cfg=self.cfg.to_dict(), workers=workers,
                node=tracking.with_step_offset(self.node_spec(node_id, run.sizes), self.tree, run.manifest),
                parent_refs=[run.refs[a] for a in self.chain_ids(node_id)],
                keeper=run.keeper, adapter_path=str((self.run_dir / "nodes" / node_id / "adapter").absolute()),
                name=f"{node_id}.launch{self._launches}.{int(time.time())}",
                slots=run.slots, storage=run.storage, board=run.board, simulate=self.simulate,
                max_failures=self.cfg.resources.max_failures,
            )
            executor = self._executor(job)
            run.manifest.update(node_id, status="running", started_at=time.time(), finished_at=None,
                                resources={"workers": workers, "gpu": run.slots.use_gpu, "executor": executor})
            self.on_event(RunEvent.NODE_STARTED, {"node": node_id, "workers": workers, "executor": executor})
            run.running[pool.submit(self._run, job)] = (node_id, workers)

    def _launch_evaluations(self, pool: ThreadPoolExecutor, run: Run) -> None:
        """--resume: evaluate again, one worker each, the done nodes whose evaluation failed (slots allowing)."""
        for node_id in sorted(run.evaluate):
            if run.slots.total - run.busy_slots < 1:
                return
            self._launches += 1
            job = NodeJob(
                cfg=self.cfg.to_dict(), node=self.node_spec(node_id, run.sizes), workers=1,
                parent_refs=[run.refs[a] for a in self._evaluation_chain(node_id)],
                name=f"{node_id}.evaluate{self._launches}.{int(time.time())}",
                slots=run.slots, storage=run.storage, board=run.board, max_failures=self.cfg.resources.max_failures,
                evaluate_only=True,
            )
            run.evaluate.discard(node_id)
            run.evaluating.add(node_id)
            run.running[pool.submit(self._run, job)] = (node_id, 1)

    def _finish_evaluation(self, run: Run, future: Future, node_id: str) -> None:
        """A re-evaluation's scores replace the error; the node, its adapter and its exports stay as they were."""
        run.evaluating.discard(node_id)
        entry = run.manifest.nodes[node_id]
        try:
            scores = future.result().metrics or {}
        except Exception as err:  # noqa: BLE001 - the node stays done; a later --resume tries again
            scores = {"evaluation_error": f"{type(err).__name__}: {last_error_line(err)}"}
        metrics = {k: v for k, v in (entry.metrics or {}).items() if k != "evaluation_error"}
        metrics.update(scores)
        run.manifest.update(node_id, metrics=metrics)
        for code in entry.exported or []:  # the model cards carry the scores
            out_dir = self.run_dir / "final" / code
            model_card.write_model_card(out_dir, {**self._card_info(node_id, code, out_dir, metrics),
                                                  "export": entry.exports.get(code)})
        if "evaluation_error" in scores:
            log.warning("node %s: evaluation failed again: %s", node_id, scores["evaluation_error"])
        else:
            log.warning("node %s: evaluated again: %s", node_id, "; ".join(chrf_means(metrics.get("languages") or {})))

    def _executor(self, job: NodeJob) -> str:
        """Who runs the node: "tune" (a searched level), "warm" (a warm worker) or "ray-train"."""
        if self.simulate is None and not job.evaluate_only and search_space.searches_level(self.cfg, job.node.level):
            return "tune"
        return "warm" if self._warm is not None and job.workers == 1 else "ray-train"

    def _run(self, job: NodeJob) -> NodeResult:
        executor = self._executor(job)
        if executor == "tune":
            return tune.search_node(self.cfg, job)
        if executor == "warm":
            return self._warm.fit(job)
        return launch.fit_node(job)

    def _finish(self, run: Run, future: Future, node_id: str) -> None:
        attempts = ray.get(run.board.attempts.remote(node_id))
        manifest = run.manifest
        entry = manifest.nodes[node_id]
        try:
            out = future.result()
        except Exception as err:  # noqa: BLE001 - a failed node must not stop its siblings
            run.failed.add(node_id)
            manifest.update(node_id, status="failed", finished_at=time.time(),
                            attempts=entry.attempts + max(attempts, 1),
                            error=run.watch.explain(node_id, f"{type(err).__name__}: {err}")[:4000])
            self.on_event(RunEvent.NODE_FAILED, {"node": node_id, "error": run.watch.explain(node_id, last_error_line(err))})
            run.keeper.drop.remote(node_id)  # what a failed attempt may have handed over
            return
        adapter_rel = Path("nodes") / node_id / "adapter"
        handed_on = any(node_id in self.chain_ids(child.id) for child in self.tree.children_of(node_id))
        if out.kept_checksum is not None:  # saved by the keeper (persisted before "done"); only its reference here
            checksum = out.kept_checksum
            ref = ray.get(run.keeper.take.remote(node_id))[0]
            if handed_on:
                run.refs[node_id] = ref
            del ref
        else:  # a searched node: the best trial's adapter came back as the result
            own = from_wire(out.adapter, copy=False)  # the fit result's arrays: no second copy on the head
            handoff.save_adapter_state(own, self.run_dir / adapter_rel)  # persisted before "done"
            checksum = handoff.state_checksum(own)
            del own
            if handed_on:
                run.refs[node_id] = ray.put(out.adapter)  # once; every child gets this ref
        out.adapter = None  # the driver keeps no adapter in memory
        workers = out.workers
        resources = dict(entry.resources or {})
        resources["gpu_ids"] = sorted({g for w in workers for g in w.get("gpu_ids", [])}, key=str)
        resources["hosts"] = sorted({w.get("node_ip", "") for w in workers})
        if out.trials:
            run.watch.release_all()  # the search's stopped trials free their slots before children start
        # Exports run on a real run, and on a dry run whose adapters have the real shapes.
        real_bytes = not self.simulate or self.simulate.get("adapters") == "real"
        exports = self._export_leaves(node_id, run, out.metrics or {}) if real_bytes else {}
        manifest.update(
            node_id,
            status="done",
            finished_at=time.time(),
            attempts=entry.attempts + max(attempts, 1),
            resources=resources,
            adapter=str(adapter_rel),
            checksum=checksum,
            received_checksums=out.received_checksums,
            handed_from=self.chain_ids(node_id),
            metrics=out.metrics,
            history=out.history,
            trials=out.trials,
            exported=sorted(exports),
            exports=exports,
        )
        self.on_event(RunEvent.NODE_DONE, {"node": node_id, "metrics": out.metrics or {}})

    def _export_leaves(self, node_id: str, run: Run, metrics: dict) -> dict[str, dict]:
        """Languages whose last node this is get final/<code>/ in export.mode (a PEFT adapter, a merged
        model, ...), written by a task on the head from the saved node adapters; {code: export info}."""
        codes = [lang.code for lang in self.tree.languages if self.tree.leaf_for(lang.code).id == node_id]
        if not codes:
            return {}
        nodes = run.manifest.nodes
        chain = [self.run_dir / (nodes[a].adapter or "") for a in self.chain_ids(node_id)]
        chain = handoff.handed_on(chain + [self.run_dir / "nodes" / node_id / "adapter"],
                                  self.cfg.model.handoff, self.cfg.model.mode)
        base_ref = export.base_model_reference(self.cfg)
        infos = {}
        for i, code in enumerate(codes, 1):
            out_dir = self.run_dir / "final" / code
            with progress.exporting(self.on_event, node_id, code, i, len(codes)):
                infos[code] = keeper.on_head(run.head, export_modes.export_language, self.cfg, chain, out_dir, base_ref)
                model_card.write_model_card(out_dir, {**self._card_info(node_id, code, out_dir, metrics),
                                                      "export": infos[code]})
        return infos

    def _card_info(self, node_id: str, code: str, out_dir: Path, metrics: dict) -> dict:
        """What final/<code>/README.md says: plain fields for `model_card.card_text`."""
        cfg, name = self.cfg, self.tree.language_name(code)
        amr2text = cfg.data.direction == "amr2text"
        prompt = make_pair(cfg.data.direction, name, "{amr}", "{text}")[0]
        base = export.base_model_reference(cfg)
        adapter_cfg = out_dir / "adapter_config.json"
        rank = json.loads(adapter_cfg.read_text())["r"] if adapter_cfg.is_file() else None
        cap = cfg.data.max_train_per_corpus
        corpora = ", ".join(cfg.data.corpora or ["amr3", "flores"])
        load = ["from peft import PeftModel", "from transformers import AutoModelForSeq2SeqLM, AutoTokenizer"]
        if cfg.model.mode == "qlora":
            load += ["from transformers import BitsAndBytesConfig",
                     f"quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type={cfg.model.quant_type!r}, "
                     f"bnb_4bit_use_double_quant={cfg.model.double_quant})",
                     f"base = AutoModelForSeq2SeqLM.from_pretrained({base!r}, quantization_config=quant)"]
        elif cfg.model.mode == "lora":
            load += [f"base = AutoModelForSeq2SeqLM.from_pretrained({base!r})"]
        if cfg.model.mode == "fft":
            load = ["from transformers import AutoModelForSeq2SeqLM, AutoTokenizer",
                    f"model = AutoModelForSeq2SeqLM.from_pretrained('final/{code}')"]
        else:
            load += [f"model = PeftModel.from_pretrained(base, 'final/{code}')"]
        load += [f"tokenizer = AutoTokenizer.from_pretrained({base!r})",
                 f"inputs = tokenizer({prompt.replace('{amr}', '(w / want-01 :ARG0 (b / boy))')!r}, return_tensors='pt')"
                 if amr2text else f"inputs = tokenizer({prompt.replace('{text}', 'The boy wants to go.')!r}, "
                                  "return_tensors='pt')",
                 "print(tokenizer.decode(model.generate(**inputs, max_new_tokens=128)[0], skip_special_tokens=True))"]
        return {
            "code": code, "language": name, "direction": cfg.data.direction,
            "prompt": prompt,
            "tree_path": [a.id for a in self.tree.ancestors(node_id)] + [node_id],
            "handoff": cfg.model.handoff, "mode": cfg.model.mode, "base_model": cfg.model.base, "run": self.cfg.run_name,
            "quantization": {"quant_type": cfg.model.quant_type, "double_quant": cfg.model.double_quant,
                             "compute_dtype": cfg.model.compute_dtype} if cfg.model.mode == "qlora" else None,
            "lora_rank": rank, "target_modules": sorted(cfg.model.lora.target_modules),
            "data": f"the {corpora} training splits of every language under each node of the path"
                    + (f", at most {cap} examples per corpus and language" if cap else "")
                    + f" ({Path(cfg.data.dir).name}/)",
            "scores": (metrics.get("languages") or {}).get(code) or {},
            "load": load,
        }
