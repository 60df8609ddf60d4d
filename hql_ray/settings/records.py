"""The typed records that move between modules and across Ray, and how they read and write JSON.

What a node trains on (`NodeSpec`), what it gives back (`NodeResult`: its `NodeMetrics`, with one
`TestSetScores` per language and test set, its `HistoryPoint`s, its workers, its trials), what the
run record keeps (`NodeResources`, `ExportInfo`), what workers say while they train (`Progress`, with
the `Task` of a long step), and what the driver tells the terminal (one record per kind of event).

Plain dataclasses: they pickle through Ray unchanged (tensors inside `NodeResult.adapter` are numpy
arrays while they cross Ray, see `hql_ray.training.adapter_files.to_wire`). The manifest stores them
with `to_json` and reads them with `from_json`, which also reads what older hql-ray versions wrote.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import typing
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, ClassVar

# ---- JSON -------------------------------------------------------------------------------------------


class JsonRecord:
    """`to_json`: the fields as plain data, None-valued optional fields left out (`KEEP_NONE` keeps them);
    `from_json`: the known keys of a dict (others ignored), nested records rebuilt by their annotations."""

    KEEP_NONE: ClassVar[tuple[str, ...]] = ()
    JSON_NAMES: ClassVar[dict[str, str]] = {}  # field -> its key in JSON, where they differ

    def to_json(self) -> dict:
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None and f.name not in self.KEEP_NONE:
                continue
            out[self.JSON_NAMES.get(f.name, f.name)] = _plain(value)
        return out

    @classmethod
    def from_json(cls, data: dict | None):
        if data is None:
            return None
        if isinstance(data, cls):
            return data
        hints, names = _fields_of(cls)
        return cls(**{names[k]: _typed(hints[names[k]], v) for k, v in data.items() if k in names})


@functools.lru_cache(maxsize=None)
def _fields_of(cls) -> tuple[dict, dict[str, str]]:
    """A record class's field types and {JSON key: field name}, worked out once per class: `get_type_hints`
    evaluates every string annotation again at each call (a 365-node manifest took ~6 s to read without this)."""
    hints = typing.get_type_hints(cls)
    return hints, {cls.JSON_NAMES.get(f.name, f.name): f.name for f in dataclasses.fields(cls) if f.init}


def _plain(value):
    if isinstance(value, JsonRecord):
        return value.to_json()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, float) and not math.isfinite(value):
        return None  # NaN / inf are not JSON
    return value


def _typed(hint, value):
    """`value` (plain JSON) as `hint` says: records rebuilt, lists and dicts of records too."""
    if value is None:
        return None
    origin = typing.get_origin(hint)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType")):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return _typed(args[0], value) if len(args) == 1 else value
    if isinstance(hint, type) and issubclass(hint, JsonRecord):
        return hint.from_json(value) if isinstance(value, dict) else value
    if origin is list and isinstance(value, list):
        (item,) = typing.get_args(hint) or (Any,)
        return [_typed(item, v) for v in value]
    if origin is tuple and isinstance(value, (list, tuple)):
        return tuple(tuple(v) if isinstance(v, list) else v for v in value)
    if origin is dict and isinstance(value, dict):
        _, item = typing.get_args(hint) or (Any, Any)
        return {k: _typed(item, v) for k, v in value.items()}
    return value


# ---- scores ---------------------------------------------------------------------------------------

TEXT_METRICS = ("spbleu", "bleu_13a", "chrf++", "lid", "lid_diff")  # AMR-to-text, as the paper names them
SMATCH_METRICS = ("f1", "precision", "recall")  # text-to-AMR
METRIC_NAMES = {"spbleu": "spBLEU", "bleu_13a": "BLEU (13a)", "chrf++": "chrF++", "lid": "LID",
                "lid_diff": "LID diff", "smatch": "smatch F1", "f1": "smatch F1", "precision": "smatch P",
                "recall": "smatch R"}
LEGACY_TEST_SET = "union"  # an older run's one score per language, on the union of its test splits


@dataclass
class Sample(JsonRecord):
    source: str = ""
    hypothesis: str = ""
    reference: str = ""


@dataclass
class TextsRef(JsonRecord):
    """Where a test set's sources, hypotheses and references were written (relative to the run folder)."""

    dir: str | None = None
    host: str | None = None
    error: str | None = None  # why they were not written


@dataclass
class TestSetScores(JsonRecord):
    """One language's scores on one test set: the text metrics (amr2text) or smatch (text2amr), their
    sacreBLEU signatures, and for each metric not computed, why."""

    __test__: ClassVar[bool] = False  # not a pytest test class, despite its name
    JSON_NAMES: ClassVar[dict[str, str]] = {"chrf": "chrf++"}
    n: int = 0
    spbleu: float | None = None
    bleu_13a: float | None = None
    chrf: float | None = None
    lid: float | None = None
    lid_diff: float | None = None
    reference_lid: float | None = None
    reference_lid_source: str | None = None  # eval.lid_baseline, or computed
    f1: float | None = None
    precision: float | None = None
    recall: float | None = None
    valid_share: float | None = None  # predictions that parse as AMR graphs
    match: int | None = None
    test: int | None = None
    gold: int | None = None
    signatures: dict[str, str] = field(default_factory=dict)
    not_computed: dict[str, str] = field(default_factory=dict)
    error: str | None = None
    clipped: int = 0  # sources cut at data.max_source_length
    samples: list[Sample] = field(default_factory=list)
    texts: TextsRef | None = None

    @property
    def is_smatch(self) -> bool:
        return self.f1 is not None or "smatch" in self.not_computed or "f1" in self.not_computed

    def value(self, metric: str) -> float | None:
        """A metric by its name ("chrf++", "spbleu", "smatch" = F1, ...); None when not scored."""
        value = getattr(self, {"chrf++": "chrf", "smatch": "f1"}.get(metric, metric), None)
        return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None

    def to_json(self) -> dict:
        out = super().to_json()
        for metric in (SMATCH_METRICS if self.is_smatch else TEXT_METRICS):  # "not computed" stays visible
            out.setdefault(metric, None)
        return out



_LEGACY_KEYS = {"n", "bleu", "chrf++", "spbleu", "f1", "precision", "recall", "signatures", "samples", "clipped"}


def is_legacy_scores(entry) -> bool:
    """An older hql-ray's one score dict per language (its "bleu" was BLEU 13a), not {test set: scores}."""
    return isinstance(entry, dict) and bool(_LEGACY_KEYS & set(entry))


def upgrade_legacy_scores(entry: dict) -> dict:
    """An older hql-ray's score dict in today's keys; the metrics it did not compute say so."""
    out = {k: v for k, v in entry.items() if k not in ("bleu", "signatures")}
    if "f1" in entry:
        return out
    sigs = entry.get("signatures") or {}
    out["bleu_13a"] = entry.get("bleu")
    out["signatures"] = {k: v for k, v in {"bleu_13a": sigs.get("bleu"), "chrf++": sigs.get("chrf++"),
                                           "spbleu": sigs.get("spbleu")}.items() if v}
    why = "not recorded by the older hql-ray that made this run"
    not_computed = {} if out.get("spbleu") is not None else {"spbleu": why}
    not_computed.update({"lid": "older hql-ray (no LID then)", "lid_diff": "older hql-ray (no LID then)"})
    out["not_computed"] = not_computed
    return out


def scores_by_test_set(entry) -> dict[str, TestSetScores]:
    """A language's entry of a node's languages as {test set: scores}: today's entries are that already;
    an older hql-ray's single score dict becomes {"union": ...}."""
    if isinstance(entry, TestSetScores):
        return {LEGACY_TEST_SET: entry}
    if not isinstance(entry, dict):
        return {}
    if is_legacy_scores(entry):
        return {LEGACY_TEST_SET: TestSetScores.from_json(upgrade_legacy_scores(entry))}
    return {k: TestSetScores.from_json(v) for k, v in entry.items() if isinstance(v, (dict, TestSetScores))}


Languages = dict[str, dict[str, TestSetScores]]  # code -> test set -> scores


@dataclass
class HistoryPoint(JsonRecord):
    """A point of a node's curves: the training loss since the last point and/or a validation loss."""

    step: int = 0
    train_loss: float | None = None
    val_loss: float | None = None


@dataclass
class TrialChoice(JsonRecord):
    """The searched values of one trial (and which trial it was, for the chosen one)."""

    lora_r: int = 0
    lora_alpha: int = 0
    learning_rate: float = 0.0
    trial_id: str | None = None


@dataclass
class NodeMetrics(JsonRecord):
    """What a node's training and evaluation measured (the manifest's `metrics` of a node)."""

    initial_val_loss: float | None = None
    val_loss: float | None = None  # the best validation loss (the step kept)
    train_loss: float | None = None
    steps: int | None = None
    examples: int | None = None
    validation_examples: int | None = None
    skipped_examples: int | None = None
    clipped_examples: dict[str, int] | None = None  # cut at data.max_source_length / max_target_length
    train_seconds: float | None = None
    world_size: int | None = None
    resumed_from_step: int | None = None
    languages: dict[str, dict[str, TestSetScores]] = field(default_factory=dict)
    evaluation_error: str | None = None  # a failed evaluation (the node stays done; --resume scores it again)
    trial: TrialChoice | None = None  # a searched node: the chosen trial
    simulated_seconds: float | None = None  # a --simulate run

    @classmethod
    def from_json(cls, data):
        if isinstance(data, dict) and isinstance(data.get("languages"), dict):
            data = {**data, "languages": {code: scores_by_test_set(v) for code, v in data["languages"].items()}}
        return super().from_json(data)

    def chrf_means(self) -> list[str]:
        """chrF++ per test set, the mean over the node's languages: ["chrF++ flores 31.2 (mean of 4)"]."""
        per_set: dict[str, list[float]] = {}
        for scores in self.languages.values():
            for test_set, s in scores.items():
                if s.chrf is not None:
                    per_set.setdefault(test_set, []).append(s.chrf)
        return [f"chrF++{'' if name == LEGACY_TEST_SET else ' ' + name} {sum(v) / len(v):.1f} (mean of {len(v)})"
                for name, v in per_set.items()]


# ---- a node, as a job and as a result ---------------------------------------------------------------


@dataclass(frozen=True)
class NodeSpec:
    """A tree node as a training job sees it: who it is, its languages (code, display name), its data size."""

    id: str
    name: str
    level: str
    depth: int
    parent: str | None
    is_leaf: bool
    languages: tuple[tuple[str, str], ...]
    examples: int = 0
    step_offset: int = 0  # steps its ancestors trained: its steps counted from the root start here (tracking)

    @classmethod
    def of(cls, node, examples: int, step_offset: int = 0) -> "NodeSpec":
        """From a `tree.TreeNode` and the node's training-example count."""
        return cls(node.id, node.name, node.level, node.depth, node.parent, not node.children,
                   tuple((lang.code, lang.name) for lang in node.languages), examples, step_offset)


@dataclass
class WorkerInfo(JsonRecord):
    """Who ran a node: one per worker of its run."""

    host: str = ""
    node_ip: str = ""
    pid: int = 0
    gpu_ids: list[str] = field(default_factory=list)
    cuda: bool = False


@dataclass
class AdapterState:
    """A node's trainable part, as it is handed on, persisted and exported.

    `tensors`: the LoRA factors in PEFT's saved-key format (``base_model.model.<module>.lora_A.weight``),
    so they load with ``set_peft_model_state_dict``; torch tensors, or numpy arrays while crossing Ray
    (`dtypes` then keeps the torch dtypes numpy lacks). `config`: the LoRA shape the way PEFT and the
    saved state.json name it (`LoraShape.to_state`), or for fft {"kind": "full", "aliases": {...}}:
    every weight of the model, tied ones stored once.
    """

    config: dict
    tensors: dict
    dtypes: dict = field(default_factory=dict)

    @property
    def is_full(self) -> bool:
        return self.config.get("kind") == "full"


@dataclass
class TrialRecord(JsonRecord):
    """One trial of a searched node, as the manifest keeps it."""

    trial_id: str = ""
    config: TrialChoice = field(default_factory=TrialChoice)
    metric: str = "val_loss"
    value: float | None = None
    status: str = "error"  # done | stopped (by ASHA) | error
    best: bool = False
    validations: int | None = None
    starts: int = 0
    run: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    time: float | None = None
    error: str | None = None


@dataclass
class NodeResult:
    """What training a node gives back (rank 0's; other ranks return None)."""

    adapter: AdapterState | None  # the node's own adapter, or the full model (fft); None once kept
    metrics: NodeMetrics
    history: list[HistoryPoint]
    trials: list[TrialRecord] | None = None  # a searched node: every trial (hql_ray.orchestration.tune)
    workers: list[WorkerInfo] = field(default_factory=list)
    received_checksums: list[str] = field(default_factory=list)  # the ancestors' adapters it started from
    # The adapter went to the run's keeper (hql_ray.orchestration.keeper), which saved it: its checksum.
    kept_checksum: str | None = None
    # resources.elastic: the node wrote a checkpoint at this step and ended its run, to go on on more workers
    # (no adapter yet: the driver relaunches it from that checkpoint)
    paused_at: int | None = None


# ---- what the run record keeps besides the result -----------------------------------------------------


@dataclass
class NodeResources(JsonRecord):
    """Where and how a node ran."""

    workers: int = 0
    gpu: bool = False
    executor: str | None = None  # ray-train | warm | tune
    gpu_ids: list[str] = field(default_factory=list)
    hosts: list[str] = field(default_factory=list)


@dataclass
class ExportInfo(JsonRecord):
    """What final/<code>/ holds: the export mode, its bytes, and compact's measured logit error."""

    mode: str = "adapter"
    bytes: int | None = None
    rank: int | None = None
    logit_max_abs_error: float | None = None
    logit_rel_error: float | None = None


# ---- live progress ----------------------------------------------------------------------------------


@dataclass
class Task(JsonRecord):
    """A long step of a node besides training: tokenizing a split, generating or scoring a test set, an export."""

    what: str = ""  # tokenize | generate | score | export
    code: str | None = None
    index: int | None = None  # language i of count
    count: int | None = None
    split: str | None = None
    cached: bool = False
    test_set: str | None = None
    done: int | None = None
    total: int | None = None

    PHASES: ClassVar[dict[str, str]] = {"tokenize": "prepare", "generate": "evaluate", "score": "evaluate",
                                        "export": "export"}

    @property
    def phase(self) -> str | None:
        return self.PHASES.get(self.what)

    def text(self) -> str:
        """In words: "tokenizing deu_Latn train (3/12)", "generating flores deu_Latn 64/1012 (language 3/12)",
        "scoring flores deu_Latn (language 3/12)", "exporting deu_Latn (1/2)"."""
        code = self.code or "?"
        of = f"{self.index}/{self.count}" if self.count else ""
        if self.what == "tokenize":
            verb = "loading" if self.cached else "tokenizing"
            return f"{verb} {code} {self.split or ''}".rstrip() + (
                f" ({of}{', cached' if self.cached else ''})" if of else "")
        if self.what == "generate":
            done = f" {self.done}/{self.total}" if self.total is not None else ""
            return f"generating {self.test_set or ''} {code}{done}" + (f" (language {of})" if of else "")
        if self.what == "score":
            return f"scoring {self.test_set or ''} {code}" + (f" (language {of})" if of else "")
        if self.what == "export":
            return f"exporting {code}" + (f" ({of})" if of else "")
        return self.what


@dataclass
class Progress(JsonRecord):
    """What a node's rank 0 tells the run board while it runs; the board keeps the merge of them (`merged`)."""

    node: str = ""
    phase: str | None = None  # prepare | train | evaluate
    step: int | None = None
    total_steps: int | None = None
    epoch: float | None = None
    loss: float | None = None
    val_loss: float | None = None
    task: Task | None = None
    trial: str | None = None
    resumed_from: int | None = None  # the step its checkpoint let it continue from (an earlier attempt or launch)
    time: float | None = None  # when the board received it

    def merged(self, newer: "Progress") -> "Progress":
        """This progress updated by a newer one: its fields that are set win."""
        return dataclasses.replace(self, **{f.name: getattr(newer, f.name) for f in dataclasses.fields(newer)
                                            if getattr(newer, f.name) is not None})

    @property
    def current_task(self) -> Task | None:
        """The last task, if it belongs to the phase the node is in (the board keeps a node's last task)."""
        return self.task if self.task is not None and self.task.phase == self.phase else None


# ---- the driver's events (one record per kind; the reporters tell them apart by type) ----------------


@dataclass
class RunStarted:
    run_dir: str
    slots: int
    gpu: bool
    nodes: int
    board: Any = None  # the run board actor (the reporters poll it)


@dataclass
class NodeSkipped:
    node: str


@dataclass
class NodeStarted:
    node: str
    workers: int
    executor: str = "ray-train"


@dataclass
class NodeResized:
    """resources.elastic: a running node goes on from its checkpoint on more workers (`paused_at`: the step)."""

    node: str
    workers_before: int
    workers: int
    paused_at: int | None = None


@dataclass
class NodeWaiting:
    node: str
    message: str
    trial: str | None = None
    waited: float = 0.0


@dataclass
class NodeDone:
    node: str
    metrics: NodeMetrics = field(default_factory=NodeMetrics)


@dataclass
class NodeFailed:
    node: str
    error: str


@dataclass
class ExportStarted:
    node: str
    code: str
    index: int = 1
    count: int = 1


@dataclass
class ExportDone:
    node: str
    code: str
    index: int = 1
    count: int = 1
    seconds: float | None = None


@dataclass
class RunFinished:
    failed: list[str] = field(default_factory=list)
    not_done: list[str] = field(default_factory=list)


Event = typing.Union[RunStarted, NodeSkipped, NodeStarted, NodeResized, NodeWaiting, NodeDone, NodeFailed,
                     ExportStarted, ExportDone, RunFinished]
