"""One typed config for a run: YAML file + the original's flags + `key=value` overrides.

Precedence (later wins): built-in defaults < `--config FILE` < flags < `section.key=value` overrides.
Validated up front so that a typo fails before any model is loaded. Crosses Ray boundaries as itself (a
dataclass pickles); `to_dict` / `from_dict` are for YAML and the manifest.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hql_ray.settings.errors import ConfigError
from hql_ray.settings.exports import EXPORT_MODES, EXPORT_NODES
from hql_ray.settings.handoffs import HANDOFFS
from hql_ray.settings.search_space import parse_tune

MODES = ("qlora", "lora", "fft")
DIRECTIONS = ("amr2text", "text2amr")
OPTIMIZERS = ("adafactor_foreach", "adafactor_hf")
COMPUTE_DTYPES = ("auto", "float32", "bfloat16", "float16")
VALIDATION_MODES = ("first", "sample")
# train.validation_loss: token = every label token of the validation set weighs the same; batch_mean = the
# original HF Trainer's eval_loss, the mean of per-batch mean losses (each batch weighted by its examples).
VALIDATION_LOSSES = ("token", "batch_mean")
EXECUTORS = ("auto", "warm", "ray-train")
PRECISIONS = ("fp32", "bf16")  # train.precision
HOST_SYNCS = ("step", "log")  # train.host_sync
# resources.policy: the classes of hql_ray.orchestration.scheduling.POLICIES (see docs/scheduling.md).
SCHEDULING_POLICIES = ("critical-path", "largest-first")
# Keys renamed since earlier releases: old configs and old runs' manifests still load.
RENAMED = {"data.max_train_per_language": "data.max_train_per_corpus"}
TARGET_MODULES = ["q", "k", "v", "o", "wi_0", "wi_1", "wo"]
# model.base values built in (under models_dir, no download): the random tiny mT5 and the demo's pre-trained one.
TINY_BASES = ("tiny", "tiny-pretrained")


@dataclass(frozen=True)
class LinearizeOptions:
    """What a linearized AMR graph keeps (data.linearize); the defaults give the original's format."""

    keep_wiki: bool = True
    keep_variables: bool = True
    keep_senses: bool = True


@dataclass
class RunSection:
    name: str | None = None  # -sn: the run's folder under output_dir; None = the tree file's stem
    output_dir: str = "runs"  # where manifest, adapters and results go
    # Where Ray Train keeps checkpoints and node adapters: a local dir, NFS path or s3:// URI.
    # None = <output_dir>/<name>/storage.
    storage_path: str | None = None
    seed: int = 0
    resume: bool = False
    # --grow: an earlier run folder whose finished nodes this run reuses as they are (its tree may add
    # languages); this run folder may be that one (grown in place, as --resume) or a new one.
    grow: str | None = None


@dataclass
class TreeSection:
    file: str = "language_files/12langs_pthql.csv"  # -lf
    levels: list[str] | None = None  # -ln; None = every level column of the file
    # -sv: node values not trained in this run (the original's skip_values, e.g. Germanic eng_Latn).
    # A skipped node's children start from its adapter already in the run folder.
    skip: list[str] = field(default_factory=list)
    # --retrain: finished nodes of the earlier run (--resume, --grow) trained again, with every node below them.
    retrain: list[str] = field(default_factory=list)


@dataclass
class DataSection:
    dir: str = "data"  # the original's layout: data/amr3/<code>/..., data/flores/<code>/...
    corpora: list[str] | None = None  # training corpora; None = the original's (amr3 and flores)
    direction: str = "amr2text"  # or text2amr (parsing, scored with smatch)
    # Training examples per corpus and language (the paper's 31K; the original train.py: no cap = null).
    max_train_per_corpus: int | None = 31000
    # Validation, as the original by default ("first"): each corpus of each language of a node gives its
    # first validation_size // languages // corpora rows. "sample": a seeded sample of
    # max_validation_per_language rows from the union of the language's corpora.
    validation: str = "first"
    validation_size: int = 5000  # -ts (the original's test_size: the validation budget of a node)
    max_validation_per_language: int | None = 200  # validation: sample only
    max_test_per_language: int | None = None
    # Token limits (null = no truncation, as the original); clipped counts are reported when set.
    max_source_length: int | None = None
    max_target_length: int | None = None
    skip_bad: bool = False  # skip (and count) malformed lines instead of stopping
    cache_dir: str | None = None  # tokenized Arrow cache; None = <output_dir>/.cache
    linearize: LinearizeOptions = field(default_factory=LinearizeOptions)  # what a linearized graph keeps


@dataclass
class LoraShape:
    """LoRA's settings, one type for all: the config's model.lora, what a node's adapter was trained with
    (its state's "config", see `to_state`), a Tune trial's values. The original's defaults: r = alpha =
    256, rsLoRA, every linear layer."""

    r: int = 256  # -ls
    alpha: int | None = None  # None = r (the original: alpha = r)
    use_rslora: bool = True
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: list(TARGET_MODULES))

    @property
    def lora_alpha(self) -> int:
        return self.r if self.alpha is None else self.alpha

    @property
    def scaling(self) -> float:
        """PEFT's LoRA scaling: alpha / r, or alpha / sqrt(r) with rsLoRA."""
        return self.lora_alpha / (math.sqrt(self.r) if self.use_rslora else self.r)

    def to_peft(self, **extra):
        """The PEFT LoraConfig (`extra`: e.g. base_model_name_or_path, inference_mode)."""
        from peft import LoraConfig, TaskType  # only where a model is built

        return LoraConfig(task_type=TaskType.SEQ_2_SEQ_LM, r=self.r, lora_alpha=self.lora_alpha,
                          use_rslora=self.use_rslora, lora_dropout=self.dropout,
                          target_modules=list(self.target_modules), bias="none", **extra)

    def to_state(self) -> dict:
        """As an adapter state's "config" (the keys PEFT names them by, as saved in state.json)."""
        return {"r": self.r, "lora_alpha": self.lora_alpha, "use_rslora": self.use_rslora,
                "lora_dropout": self.dropout, "target_modules": sorted(self.target_modules)}

    @classmethod
    def from_state(cls, config: dict) -> "LoraShape":
        return cls(config["r"], config["lora_alpha"], config["use_rslora"], config["lora_dropout"],
                   list(config["target_modules"]))


@dataclass
class ModelSection:
    base: str = "google/mt5-large"  # -bm; "tiny" = built-in random tiny mT5, no download
    mode: str = "qlora"  # -tm: qlora | lora | fft
    handoff: str = "stack"  # stack | merge | continue
    double_quant: bool = True
    quant_type: str = "nf4"
    # auto = bfloat16 on a GPU that has it, float32 on CPU (the original in effect ran float32).
    compute_dtype: str = "auto"
    gradient_checkpointing: bool | None = None  # None = on for GPU workers, off on CPU (the original: on)
    lora: LoraShape = field(default_factory=LoraShape)


@dataclass
class TrainSection:
    epochs: float = 1.0  # -le: epochs per level
    batch_size: int = 8  # -bs: examples per optimizer step, whatever the number of workers
    # True = the old data-parallel scaling: batch_size per worker, so W workers step on W x batch_size.
    batch_per_worker: bool = False
    # Examples per forward pass on one worker; a worker's share of the batch above this is accumulated.
    # None = the whole share in one pass.
    micro_batch_size: int | None = None
    learning_rate: float = 5e-5
    weight_decay: float = 0.0
    warmup_steps: int = 0
    max_grad_norm: float | None = 1.0
    group_by_length: bool = True
    eval_every: int = 500  # optimizer steps between validations (the original: 500); 0 = once per epoch. Always at the end.
    checkpoint_every: int = 0  # steps between checkpoints (for retry); 0 = at every validation. And at the end.
    checkpoints_kept: int = 2  # Ray Train keeps this many of a node's latest checkpoints (~2.3 GB each at r=256)
    max_steps: int | None = None  # cap on optimizer steps per node (smoke runs)
    validation_loss: str = "token"  # token | batch_mean (the original Trainer's; VALIDATION_LOSSES)
    log_every: int = 10
    # Same update rule either way: adafactor_foreach (hql_ray.training.adafactor) stacks same-shaped tensors
    # into a few ops per step; adafactor_hf is transformers' per-tensor loop.
    optimizer: str = "adafactor_foreach"
    # Rows per chunk of the head + cross-entropy (hql_ray.training.losses: no full-vocabulary fp32 logits for
    # the whole batch); 0 = the model's own loss. Needs a frozen head (not model.mode fft).
    chunked_loss: int = 0
    # Dropout masks drawn per example from (node seed, step, row) (hql_ray/training/dropout.py): a node ends with
    # the same adapter on any number of workers. Costs dispatcher calls in an eager step (95,120 vs 47,844 per
    # step at mT5-large's structure, benchmarks/README.md step_counts; compiled blocks fuse them). false: torch's
    # dropout seeded per worker rank (the results then depend on the number of workers).
    example_dropout: bool = True
    # The GPU step (hql_ray/training/step.py, docs/gpu.md). The defaults keep the original's step until the GPU
    # check (benchmarks/gpu_check.sh) has measured the others.
    # fp32: LoRA, the upcast embeddings/head and the loss in fp32 (the original). bf16: the forward and backward
    # under torch.autocast(bfloat16); the LoRA weights, their gradients and the optimizer stay fp32.
    precision: str = "fp32"
    # Real (non-pad) source + target tokens per optimizer step, whatever the number of workers (as batch_size):
    # length-grouped batches of about this many tokens instead of batch_size examples. None = batch_size.
    batch_tokens: int | None = None
    # Pad each batch's source and target lengths up to a multiple of this (0 = to the longest example): fewer
    # distinct shapes for compiled blocks and CUDA graphs. The loss is the same (padding is masked).
    pad_to_multiple: int = 0
    # log: the step's loss and token counts stay on the device and are read every log_every steps (one host sync
    # per interval; attention masks built so that transformers never reads them back). step: read every step.
    host_sync: str = "log"
    # model.mode qlora: the 4-bit base's weights dequantized once and kept (in the compute dtype) while the node
    # trains, instead of dequantized at every matmul: the same numbers, ~1 GB more at mT5-large, far fewer kernels.
    dequantized_base: bool = False
    # Regional compilation: torch.compile each encoder/decoder block (one graph per block kind, reused by every
    # layer), eager with a warning if compiling fails. compile_backend: torch.compile's backend.
    compile_blocks: bool = False
    compile_backend: str = "inductor"
    # CUDA graphs for the compiled blocks (torch.compile mode reduce-overhead); needs compile_blocks, CUDA and
    # fixed shapes (pad_to_multiple). Ignored with a warning on CPU.
    cuda_graphs: bool = False
    # Several workers: gradients summed in buckets of this many MB, each launched while the backward goes on
    # (DDP's default size); 0 = one all-reduce after the backward.
    grad_bucket_mb: float = 25.0


@dataclass
class EvalSection:
    generate: bool = True  # generate on the test sets of every language under a node and score them
    # Test sets, each scored and reported apart: flores (every language), ldc2020t07 (deu, eng, ita, spa:
    # AMR 2.0 test translated), amr3 (amr3's own test split, not scored by the original), or any corpus
    # folder's name (its test split). None = from the data (hql_ray.data.corpus.default_test_sets): the
    # original's (flores, ldc2020t07) when flores is trained on, else the training corpora's test splits.
    test_sets: list[str] | None = None
    # SentencePiece model for spBLEU (sacreBLEU's flores200 tokenizer); None = sacreBLEU's cache if present.
    spbleu_model: str | None = None
    lid_model: str | None = None  # fastText language-ID model (GlotLID in the paper); None = no LID
    lid_baseline: str | None = None  # -ge: JSON of the references' LID per test set (made if missing)
    max_new_tokens: int = 128
    batch_size: int = 32
    at_nodes: str = "all"  # all | leaves: which nodes generate on their languages' test sets


@dataclass
class ResourcesSection:
    address: str | None = None  # None = start a local Ray; "auto" = join a running cluster
    num_gpus: int | None = None  # GPU slots to use; None = all the cluster has (0 = CPU run)
    num_cpu_slots: int | None = None  # concurrent CPU workers when there is no GPU; None = CPUs
    cpus_per_worker: float = 1.0
    max_workers_per_node: int = 8
    min_examples_per_worker: int = 64  # don't split a small node over many workers
    max_failures: int = 2  # worker failures retried from the last checkpoint
    # Who runs a node that gets one worker: "ray-train" (its own Ray Train run: a controller, its helper
    # actors and a worker process, ~30 CPU-seconds of start-up on a laptop), "warm" (a long-lived worker
    # per slot that imports torch/transformers/peft once and runs node after node), or "auto" (warm on the
    # CPU slots of a one-machine Ray with local storage: the laptop demo; ray-train on GPUs and clusters).
    # Nodes on several workers, Tune trials and --simulate runs are always Ray Train runs.
    executor: str = "auto"
    # Baseline for benchmarks: start a depth only when the whole previous depth is done (the
    # "one GPU per node, level by level" schedule); the default starts a child as soon as its parent is done.
    level_barrier: bool = False
    # Which ready node starts, on how many workers, and which running node grows (docs/scheduling.md):
    # critical-path (longest chain of work below first, workers by need, grows at checkpoints) or
    # largest-first (the biggest ready node first, fixed workers: the earlier rule).
    policy: str = "critical-path"
    # Elastic growth (critical-path only): when slots free up that no ready node can use, a running node
    # writes a checkpoint at its next log step, ends its run, and goes on from it on more workers (a restart
    # of ~1-2 min on GPUs, taken only where it saves more than that; the result does not depend on the
    # workers: train.example_dropout). Off by default: a node keeps the workers it started on.
    elastic: bool = False
    # A node's Ray Train run that has waited this long for its workers' resources while none of ours
    # trains is reported (what it waits for, what holds the resources); past wait_timeout_s it fails
    # instead of hanging (0 = wait forever, e.g. for a slow autoscaler).
    wait_warning_s: float = 60.0
    wait_timeout_s: float = 1800.0
    # On SIGTERM (Kubernetes, Slurm, `ray job stop`, a cloud's preemption notice: 30-120 s before the machine
    # goes), every node in flight writes a checkpoint at its next log step; the driver waits this long for them.
    stop_checkpoint_wait_s: float = 20.0


@dataclass
class ExportSection:
    # What each language's final/<code>/ holds: adapter (the exact chain as one PEFT adapter, fp32),
    # adapter-bf16 (the same in bf16), merged (a whole bf16 model, from_pretrained loads it),
    # compact (the chain re-projected to rank model.lora.r by SVD; its logit error is recorded).
    mode: str = "adapter"
    # Which nodes are exported: leaves (final/<code>/ per language) or all (and every inner node's own model
    # under final/nodes/<node id>/, a family's model for a language without a leaf).
    nodes: str = "leaves"


@dataclass
class TrackingSection:
    """Where a run's curves and scores go besides the manifest (logged by rank 0 of each node)."""

    tensorboard: bool = True  # event files under <run>/tensorboard/<node>/
    wandb: bool = False  # one W&B run per node, grouped by the tree run (WANDB_MODE=offline works)
    wandb_project: str = "hql-ray"
    wandb_entity: str | None = None
    mlflow_uri: str | None = None  # an MLflow tracking URI: a parent run per tree run, a nested run per node
    mlflow_experiment: str = "hql-ray"
    # Set by the driver (the parent run it opened), not by hand: the nodes' MLflow runs nest under it.
    mlflow_parent_run_id: str | None = None


@dataclass
class Config:
    run: RunSection = field(default_factory=RunSection)
    tree: TreeSection = field(default_factory=TreeSection)
    data: DataSection = field(default_factory=DataSection)
    model: ModelSection = field(default_factory=ModelSection)
    train: TrainSection = field(default_factory=TrainSection)
    eval: EvalSection = field(default_factory=EvalSection)
    resources: ResourcesSection = field(default_factory=ResourcesSection)
    export: ExportSection = field(default_factory=ExportSection)
    tracking: TrackingSection = field(default_factory=TrackingSection)
    tune: dict = field(default_factory=dict)  # per-level search, as written (see hql_ray/settings/search_space.py)

    # ---- conversion -------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict, source: str = "config") -> "Config":
        return _build(cls, _renamed(data or {}), source, prefix="")

    @property
    def run_name(self) -> str:
        return self.run.name or Path(self.tree.file).stem

    @property
    def run_dir(self) -> Path:
        return Path(self.run.output_dir) / self.run_name

    @property
    def cache_dir(self) -> Path:
        """Tokenized data and built models: data.cache_dir, else <output_dir>/.cache (absolute)."""
        return Path(self.data.cache_dir or Path(self.run.output_dir) / ".cache").absolute()

    @property
    def models_dir(self) -> Path:
        return self.cache_dir / "models"

    @property
    def search_specs(self) -> dict:
        """The `tune:` section parsed once: {level or "default": LevelSpec, or None where not searched}."""
        if "_search_specs" not in self.__dict__:
            self.__dict__["_search_specs"] = parse_tune(self.tune)
        return self.__dict__["_search_specs"]

    def with_absolute_paths(self) -> "Config":
        """Ray workers do not share the driver's working directory: send them absolute paths."""
        cfg = Config.from_dict(self.to_dict())

        def absolute(path: str | None) -> str | None:
            if path is None or "://" in path:
                return path
            return str(Path(path).expanduser().absolute())

        cfg.run.name = self.run_name
        cfg.run.output_dir = absolute(cfg.run.output_dir)
        cfg.run.storage_path = absolute(cfg.run.storage_path)
        cfg.run.grow = absolute(cfg.run.grow)
        cfg.tree.file = absolute(cfg.tree.file)
        cfg.data.dir = absolute(cfg.data.dir)
        cfg.data.cache_dir = absolute(cfg.data.cache_dir)
        cfg.eval.spbleu_model = absolute(cfg.eval.spbleu_model)
        cfg.eval.lid_model = absolute(cfg.eval.lid_model)  # (an hf://... reference passes unchanged)
        cfg.eval.lid_baseline = absolute(cfg.eval.lid_baseline)
        if cfg.model.base not in TINY_BASES and Path(cfg.model.base).expanduser().exists():
            cfg.model.base = absolute(cfg.model.base)
        return cfg

    def validate(self) -> "Config":
        _choice("model.mode", self.model.mode, MODES)
        _choice("model.handoff", self.model.handoff, tuple(HANDOFFS))
        _choice("data.direction", self.data.direction, DIRECTIONS)
        _choice("eval.at_nodes", self.eval.at_nodes, ("all", "leaves"))
        _choice("model.quant_type", self.model.quant_type, ("nf4", "fp4"))
        _choice("train.optimizer", self.train.optimizer, OPTIMIZERS)
        _choice("model.compute_dtype", self.model.compute_dtype, COMPUTE_DTYPES)
        _choice("data.validation", self.data.validation, VALIDATION_MODES)
        _choice("train.validation_loss", self.train.validation_loss, VALIDATION_LOSSES)
        _choice("export.mode", self.export.mode, tuple(EXPORT_MODES))
        _choice("export.nodes", self.export.nodes, EXPORT_NODES)
        _choice("resources.executor", self.resources.executor, EXECUTORS)
        _choice("resources.policy", self.resources.policy, SCHEDULING_POLICIES)
        if self.resources.elastic and self.resources.policy != "critical-path":
            raise ConfigError(f"resources.elastic grows running nodes by the critical-path policy's rule; "
                              f"resources.policy={self.resources.policy} keeps a node's workers to its end "
                              f"(set resources.policy=critical-path, or resources.elastic=false)")
        _check_test_set_names(self.eval.test_sets)
        for key, value in [
            ("train.batch_size", self.train.batch_size),
            ("model.lora.r", self.model.lora.r),
            ("data.validation_size (-ts)", self.data.validation_size),
            ("resources.max_workers_per_node", self.resources.max_workers_per_node),
            ("train.checkpoints_kept", self.train.checkpoints_kept),
            ("eval.max_new_tokens", self.eval.max_new_tokens),
        ]:
            if value < 1:
                raise ConfigError(f"{key} must be >= 1, got {value}")
        for key in ("max_train_per_corpus", "max_validation_per_language", "max_test_per_language",
                    "max_source_length", "max_target_length"):
            value = getattr(self.data, key)
            if value is not None and value < 1:
                raise ConfigError(f"data.{key} must be >= 1 or null (no limit), got {value}")
        if self.train.micro_batch_size is not None and self.train.micro_batch_size < 1:
            raise ConfigError(f"train.micro_batch_size must be >= 1 or null, got {self.train.micro_batch_size}")
        if self.train.eval_every < 0 or self.train.checkpoint_every < 0:
            raise ConfigError("train.eval_every and train.checkpoint_every must be >= 0, got "
                              f"{self.train.eval_every} and {self.train.checkpoint_every}")
        if self.train.epochs <= 0:
            raise ConfigError(f"train.epochs (-le) must be > 0, got {self.train.epochs}")
        if self.train.learning_rate <= 0:
            raise ConfigError(f"train.learning_rate must be > 0, got {self.train.learning_rate}")
        if self.train.chunked_loss < 0 or (self.train.chunked_loss and self.model.mode == "fft"):
            raise ConfigError("train.chunked_loss must be >= 0, and 0 with model.mode fft (it trains the head), "
                              f"got {self.train.chunked_loss} with {self.model.mode}")
        self._validate_step()
        if self.resources.wait_warning_s <= 0 or self.resources.wait_timeout_s < 0:
            raise ConfigError("resources.wait_warning_s must be > 0 and resources.wait_timeout_s >= 0 "
                              f"(0 = wait forever), got {self.resources.wait_warning_s} and "
                              f"{self.resources.wait_timeout_s}")
        if self.resources.stop_checkpoint_wait_s < 0:
            raise ConfigError(f"resources.stop_checkpoint_wait_s must be >= 0, got {self.resources.stop_checkpoint_wait_s}")
        if self.resources.num_gpus is not None and self.resources.num_gpus < 0:
            raise ConfigError(f"resources.num_gpus must be >= 0, got {self.resources.num_gpus}")
        self.search_specs  # a bad tune: section fails here, with the key named
        if "/" in self.run_name or self.run_name in ("", ".", ".."):
            raise ConfigError(f"run.name (-sn) must be a plain folder name, got {self.run_name!r}")
        return self

    def _validate_step(self) -> None:
        """train.precision, batch_tokens, pad_to_multiple, host_sync, compile_*, cuda_graphs, grad_bucket_mb."""
        t = self.train
        _choice("train.precision", t.precision, PRECISIONS)
        _choice("train.host_sync", t.host_sync, HOST_SYNCS)
        if t.batch_tokens is not None and t.batch_tokens < 1:
            raise ConfigError(f"train.batch_tokens must be >= 1 or null (batch_size examples), got {t.batch_tokens}")
        if t.pad_to_multiple < 0 or t.grad_bucket_mb < 0:
            raise ConfigError("train.pad_to_multiple and train.grad_bucket_mb must be >= 0, got "
                              f"{t.pad_to_multiple} and {t.grad_bucket_mb}")
        if t.cuda_graphs and not (t.compile_blocks and t.pad_to_multiple):
            raise ConfigError("train.cuda_graphs needs train.compile_blocks and train.pad_to_multiple > 0 (fixed "
                              f"shapes), got compile_blocks {t.compile_blocks}, pad_to_multiple {t.pad_to_multiple}")
        if not t.compile_backend:
            raise ConfigError("train.compile_backend must name a torch.compile backend (inductor, aot_eager...)")


def _renamed(data: dict) -> dict:
    """Old key names (RENAMED) moved to their new place; both given is an error."""
    out = copy.deepcopy(data)
    for old, new in RENAMED.items():
        (old_section, old_key), (new_section, new_key) = old.split("."), new.split(".")
        section = out.get(old_section)
        if isinstance(section, dict) and old_key in section:
            if new_key in out.get(new_section, {}):
                raise ConfigError(f"{old} is the old name of {new}: give only {new}")
            out.setdefault(new_section, {})[new_key] = section.pop(old_key)
    return out


# ---- loading ----------------------------------------------------------------------------------
def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError("config file not found", path=path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        line = getattr(getattr(err, "problem_mark", None), "line", None)
        raise ConfigError(f"invalid YAML: {err}", path=path, line=None if line is None else line + 1)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError("top level must be a mapping of sections", path=path)
    return data


def apply_override(data: dict, assignment: str) -> None:
    """Apply one `section.key=value` (value parsed as YAML: numbers, lists, null...)."""
    if "=" not in assignment:
        raise ConfigError(f"override {assignment!r} is not of the form section.key=value")
    key, raw = assignment.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"override {assignment!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as err:
        raise ConfigError(f"override {assignment!r}: cannot parse value ({err})")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {assignment!r}: {part} is not a section")
    node[parts[-1]] = value


def merge_dicts(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "tune":
            out[key] = merge_dicts(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def make_config(
    config_file: str | Path | None = None,
    flags: dict | None = None,
    overrides: list[str] | None = None,
) -> Config:
    """defaults < config file < flags (a nested dict of set values) < key=value overrides."""
    data: dict = {}
    source = "config"
    if config_file:
        data = load_yaml(config_file)
        source = str(config_file)
    if flags:
        data = merge_dicts(data, flags)
    for assignment in overrides or []:
        apply_override(data, assignment)
    return Config.from_dict(data, source=source).validate()


# ---- typed construction with errors that name the key -------------------------------------------
def _build(cls, data: Any, source: str, prefix: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {data!r}", path=source)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown key '{prefix}{unknown[0]}'; valid keys here: {', '.join(sorted(fields))}", path=source
        )
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(hints[name], value, source, f"{prefix}{name}")
    return cls(**kwargs)


def _coerce(hint, value, source: str, key: str):
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, source, key + ".")
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None:
            return None
        return _coerce(args[0], value, source, key)
    if hint is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {value!r}", path=source)
        return value
    if origin is list:
        (item,) = typing.get_args(hint)
        if isinstance(value, str):
            value = [v for v in value.replace(",", " ").split() if v]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}", path=source)
        return [_coerce(item, v, source, key) for v in value]
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{key} must be true or false, got {value!r}", path=source)
    if hint in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{key} must be a number, got {value!r}", path=source)
        try:
            number = float(value) if hint is float else int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key} must be {'a number' if hint is float else 'an integer'}, got {value!r}", path=source)
        if hint is int and isinstance(value, float) and not value.is_integer():
            raise ConfigError(f"{key} must be an integer, got {value!r}", path=source)
        return number
    if hint is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{key} must be a string, got {value!r}", path=source)
        return str(value)
    return value


def _check_test_set_names(names: list[str] | None) -> None:
    """eval.test_sets names corpus folders (or ldc2020t07): plain folder names, each once."""
    for name in names or []:
        if not name or name in (".", "..") or "/" in name or "\\" in name or name != name.strip():
            raise ConfigError(f"eval.test_sets: {name!r} is not a test set name (a corpus folder's name, e.g. "
                              "flores, ldc2020t07, amr3)")
    if names is not None and len(set(names)) != len(names):
        raise ConfigError(f"eval.test_sets lists a test set twice: {', '.join(names)}")
    if names is not None and not names:
        raise ConfigError("eval.test_sets is empty: name a test set, leave it out (the data's), or set "
                          "eval.generate=false")


def _choice(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{key} must be one of {', '.join(allowed)}; got {value!r}")
