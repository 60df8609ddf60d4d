"""The run record: OUTPUT/RUN_NAME/manifest.json, written by the driver and read by everything after a run.

Only the driver writes it (one thread), rewritten atomically after every change: a reader always sees
a complete JSON file (a temp file in the same folder, fsynced, then `os.replace`d over the old one).
`read_manifest` and `run_tree` are how `report`, `generate` and `--resume` read a run folder, including
one written by an older hql-ray (FORMAT counts the layouts; a manifest without `format` is format 1).
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from typing import ClassVar
from pathlib import Path

from hql_ray.settings.config import Config
from hql_ray.settings.errors import InputError
from hql_ray.settings.records import ExportInfo, HistoryPoint, JsonRecord, NodeMetrics, NodeResources, TrialRecord
from hql_ray.settings.tree import Language, LanguageTree, TreeNode, load_tree

STATUSES = ("pending", "running", "done", "failed", "skipped")  # skipped: tree.skip (-sv), not trained
RUN_STARTING = "starting"  # the run's status until its first node is launched (then running, done, ...)
# 1: before the format key (2026-11-29); 2: adds `format`; 3: a node's metrics["languages"] is
# {code: {test set: scores}} (before: {code: scores} on the union of the test splits, "bleu" = BLEU 13a).
FORMAT = 3


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.chmod(tmp, 0o644)  # mkstemp makes owner-only files; the record is for everyone who reads the run
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, data) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


PREVIOUS = "manifest.prev.json"  # the record before its last update: what to restore a damaged manifest from


@dataclass
class NodeRecord(JsonRecord):
    """One node of the run record: where it sits in the tree, what happened to it, what it produced."""

    KEEP_NONE: ClassVar[tuple[str, ...]] = ("parent", "started_at", "finished_at", "resources", "adapter",
                                            "checksum", "metrics", "history", "trials", "error")
    id: str = ""
    name: str = ""
    level: str = ""
    depth: int = 0
    parent: str | None = None
    children: list[str] = field(default_factory=list)
    languages: list[str] = field(default_factory=list)  # codes
    status: str = "pending"  # one of STATUSES
    started_at: float | None = None
    finished_at: float | None = None
    resources: NodeResources | None = None
    attempts: int = 0  # worker-group starts over every launch of the node
    adapter: str | None = None  # its own adapter, relative to the run folder (what --resume reuses)
    checksum: str | None = None
    received_checksums: list[str] = field(default_factory=list)
    handed_from: list[str] = field(default_factory=list)  # whose adapters it started from
    metrics: NodeMetrics | None = None
    history: list[HistoryPoint] | None = None
    trials: list[TrialRecord] | None = None  # a searched node (hql_ray.orchestration.tune)
    exported: list[str] = field(default_factory=list)  # languages written under final/
    exports: dict[str, ExportInfo] = field(default_factory=dict)  # code -> what final/<code>/ holds
    error: str | None = None
    # Growing a run (hql_ray.orchestration.growth): the languages its adapter was trained on (its `languages`
    # may have grown since; [] in runs before this field: then they are `languages`), the earlier run folder
    # it was kept from, how often --retrain (or -sv) sent it back to training (its Ray Train runs are named
    # with it: a retrained node does not continue the earlier training's checkpoints).
    trained_languages: list[str] = field(default_factory=list)
    reused_from: str | None = None
    retrained: int = 0
    node_export: ExportInfo | None = None  # export.nodes all: what final/nodes/<id>/ holds (an inner node)
    extra: dict = field(default_factory=dict)  # keys this version does not know, written back as they were

    @classmethod
    def from_json(cls, data: dict) -> "NodeRecord":
        record = super().from_json({k: v for k, v in data.items() if k != "extra"})
        known = {f.name for f in dataclasses.fields(cls)}
        record.extra = {k: v for k, v in data.items() if k not in known}
        for name in ("received_checksums", "handed_from", "exported"):  # null in some older manifests
            if getattr(record, name) is None:
                setattr(record, name, [])
        if record.exports is None:
            record.exports = {}
        return record

    def to_json(self) -> dict:
        out = super().to_json()
        extra = out.pop("extra", {})
        return {**out, **extra}

    @property
    def seen_languages(self) -> list[str]:
        """The languages whose data its adapter was trained on."""
        return list(self.trained_languages or self.languages)


class Manifest:
    """The run record: `data` is the JSON file's content but its nodes, which are `NodeRecord`s."""

    def __init__(self, path: Path, data: dict):
        self.path = Path(path)
        self.data = {k: v for k, v in data.items() if k != "nodes"}
        self.nodes: dict[str, NodeRecord] = {k: NodeRecord.from_json(v) for k, v in data["nodes"].items()}
        # Each node's part of the file as last written: `update` writes one node anew, not the whole record
        # (at 365 nodes with their histories: 172 ms of driver CPU per update, now 30; benchmarks/report_scale.py).
        self._node_texts: dict[str, str] = {}

    # ---- creation / loading -------------------------------------------------------------------
    @classmethod
    def create(cls, path: Path, tree: LanguageTree, config: dict, run_name: str) -> "Manifest":
        nodes = {node.id: NodeRecord(node.id, node.name, node.level, node.depth, node.parent, list(node.children),
                                     [lang.code for lang in node.languages]).to_json()
                 for node in tree.nodes.values()}
        data = {
            "format": FORMAT,
            "run": run_name,
            "created_at": time.time(),
            "updated_at": time.time(),
            "status": RUN_STARTING,
            "run_id": uuid.uuid4().hex[:12],  # names the run's Ray Train runs, so that --resume finds their checkpoints
            # The tree's own shape (LanguageTree.to_dict) but its nodes, which live in "nodes" below.
            "tree": {k: v for k, v in tree.to_dict().items() if k != "nodes"},
            "config": config,
            "nodes": nodes,
        }
        manifest = cls(path, data)
        manifest.save()
        return manifest

    @classmethod
    def load(cls, path: Path) -> "Manifest":
        return read_manifest(path)

    @property
    def format(self) -> int:
        return int(self.data.get("format", 1))

    def upgrade(self, tree: LanguageTree) -> None:
        """A resumed run of an older format gets this format's fields (its nodes are already the tree's;
        an older run's scores were read as {code: {"union": scores}} by `NodeMetrics.from_json`)."""
        if self.format < FORMAT:
            self.data["format"] = FORMAT
            self.data["tree"] = {k: v for k, v in tree.to_dict().items() if k != "nodes"}
        self.data.setdefault("run_id", uuid.uuid4().hex[:12])
        self.save()

    @property
    def config(self) -> Config:
        """The run's config as the manifest records it (InputError if this version cannot read it)."""
        try:
            return Config.from_dict(self.data.get("config") or {}, source=str(self.path))
        except InputError:
            raise
        except Exception as err:  # noqa: BLE001 - an old or edited manifest
            raise InputError(f"the run's config cannot be read: {err}", path=self.path) from None

    @property
    def run_id(self) -> str:
        return str(self.data.get("run_id") or "")

    def run_id_of(self, node_id: str) -> str:
        """The run id a node's Ray Train runs are named by: the run's, and the node's retrain count if any."""
        retrained = self.nodes[node_id].retrained
        return f"{self.run_id}.r{retrained}" if retrained else self.run_id

    def adopt_tree(self, tree: LanguageTree) -> None:
        """The run's tree becomes `tree` (a grown one): its new nodes are pending, the others keep their record
        with the tree's fields (children, languages) updated; tree order."""
        nodes = {}
        for node in tree.nodes.values():
            record = self.nodes.get(node.id) or NodeRecord(node.id)
            record.name, record.level, record.depth, record.parent = node.name, node.level, node.depth, node.parent
            record.children, record.languages = list(node.children), [lang.code for lang in node.languages]
            nodes[node.id] = record
        self.nodes = nodes
        self.data["tree"] = {k: v for k, v in tree.to_dict().items() if k != "nodes"}
        self.save()

    @property
    def statuses(self) -> dict[str, str]:
        return {node_id: record.status for node_id, record in self.nodes.items()}

    def to_dict(self) -> dict:
        return {**self.data, "nodes": {k: v.to_json() for k, v in self.nodes.items()}}

    def save(self) -> None:
        """Writes the whole record, every node serialized again (whoever changed a record in place calls this)."""
        self._node_texts.clear()
        self._write()

    def _write(self) -> None:
        self.data["updated_at"] = time.time()
        if self.path.exists():  # the previous record kept beside it (a disk that fails mid-write loses one update)
            os.replace(self.path, self.path.with_name(PREVIOUS))
        atomic_write_text(self.path, self.to_text())

    def to_text(self) -> str:
        """The file's text: `json.dumps(self.to_dict(), indent=2)`, each node's part reused from its last write."""
        head = json.dumps({**self.data, "nodes": None}, indent=2, default=str)[:-len("null\n}")]
        if not self.nodes:
            return head + "{}\n}\n"
        parts = []
        for node_id, record in self.nodes.items():
            text = self._node_texts.get(node_id)
            if text is None:  # nested two levels deep: four more spaces on every line but the first
                body = json.dumps(record.to_json(), indent=2, default=str).replace("\n", "\n    ")
                text = self._node_texts[node_id] = f"    {json.dumps(node_id)}: {body}"
            parts.append(text)
        return head + "{\n" + ",\n".join(parts) + "\n  }\n}\n"

    # ---- updates --------------------------------------------------------------------------------
    def update(self, node_id: str, **fields) -> None:
        if "status" in fields and fields["status"] not in STATUSES:
            raise ValueError(f"bad status {fields['status']!r}")
        record = self.nodes[node_id]
        for name, value in fields.items():
            if not hasattr(record, name) or name == "extra":
                raise AttributeError(f"a node record has no field {name!r}")
            setattr(record, name, value)
        self._node_texts.pop(node_id, None)
        self._write()

    def set_run_status(self, status: str, **extra) -> None:
        self.data["status"] = status
        self.data.update(extra)
        self.save()


# ---- reading a run folder ---------------------------------------------------------------------
def read_manifest(run_dir: str | Path) -> Manifest:
    """RUN_DIR/manifest.json (RUN_DIR may also name the file itself); InputError if absent or broken."""
    path = Path(run_dir)
    mpath = path if path.name == "manifest.json" and path.is_file() else path / "manifest.json"
    if not path.exists():
        raise InputError("run folder does not exist", path=path)
    previous = mpath.with_name(PREVIOUS)
    restore = (f"; the record before its last update is {previous}: copy it over {mpath.name} to continue the run "
               "(the node that update recorded is then trained again)") if previous.is_file() else ""
    if not mpath.is_file():
        raise InputError(f"no manifest.json here: not a hql-ray run folder{restore}", path=path)
    try:
        data = json.loads(mpath.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise InputError(f"manifest is not valid JSON: {err.msg}{restore}", path=mpath, line=err.lineno) from None
    if not isinstance(data, dict) or not isinstance(data.get("nodes"), dict):
        raise InputError("manifest has no 'nodes' table: not a hql-ray run record", path=mpath)
    if int(data.get("format", 1)) > FORMAT:
        raise InputError(f"manifest format {data['format']} is newer than this hql-ray reads ({FORMAT}): "
                         "upgrade hql-ray", path=mpath)
    try:
        return Manifest(mpath, data)
    except TypeError as err:  # a node entry without its tree fields
        raise InputError(f"manifest has a broken node entry: {err}", path=mpath) from None


def tree_from_nodes(manifest: Manifest) -> LanguageTree:
    """The run's tree rebuilt from the manifest alone (used when the tree file is gone or changed).

    Display names come from leaf nodes of the `language` level (one language each); else the code.
    """
    nodes = manifest.nodes
    names: dict[str, str] = {}
    for entry in nodes.values():
        if entry.level == "language" and len(entry.languages) == 1:
            names[entry.languages[0]] = entry.name
    codes: list[str] = []
    for entry in nodes.values():
        if entry.parent is None:
            codes += [c for c in entry.languages if c not in codes]
    langs = {c: Language(c, names.get(c, c)) for c in codes}
    tree_nodes = {
        nid: TreeNode(id=nid, name=e.name, level=e.level, depth=e.depth, parent=e.parent,
                      children=list(e.children), languages=[langs.get(c, Language(c, c)) for c in e.languages])
        for nid, e in nodes.items()
    }
    info = manifest.data.get("tree") or {}
    return LanguageTree(str(info.get("file", "")), list(info.get("levels") or []), list(langs.values()), tree_nodes)


def run_tree(manifest: Manifest) -> tuple[LanguageTree, str | None]:
    """The run's tree, and a note when it had to be pieced together (None otherwise).

    Format 2 records the tree itself (its languages with their names, and the nodes): read exactly.
    Format 1 recorded only the tree file's path: the file when it still matches the run, else the
    nodes of the manifest with display names guessed from the leaves.
    """
    info = manifest.data.get("tree") or {}
    if manifest.format >= 2:
        return LanguageTree.from_dict({"path": info.get("path", ""), "levels": info.get("levels") or [],
                                       "languages": info.get("languages") or [],
                                       "nodes": [e.to_json() for e in manifest.nodes.values()]}), None
    file = info.get("file")
    try:
        tree = load_tree(file, info.get("levels"))
    except Exception as err:  # noqa: BLE001 - any problem with the file: use the run's own record
        return tree_from_nodes(manifest), f"tree file {file} unreadable ({err}); names rebuilt from the manifest"
    if set(tree.nodes) != set(manifest.nodes):
        return tree_from_nodes(manifest), f"tree file {file} changed since the run; nodes taken from the manifest"
    return tree, None


@dataclass
class RunRecord:
    """One run as the report sees it: its manifest, its tree and what is worth a note."""

    path: Path
    label: str
    manifest: Manifest
    tree: LanguageTree
    notes: list[str] = field(default_factory=list)

    @property
    def nodes(self) -> dict[str, NodeRecord]:
        return self.manifest.nodes
