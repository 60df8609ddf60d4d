"""Growing a finished run: a tree that adds languages reuses every finished node as it is.

`plan_growth` compares the earlier run's tree (its manifest) with this start's, without Ray: which finished
nodes are kept (an ancestor is kept when a language is added below it: its adapter, scores and exports stay
byte for byte), which nodes are new, which are trained again (`--retrain NODE`: it and every node below it).
A kept node must still fit the new tree: the same parent, every language it was trained on still below it,
and, for a leaf, no language it was not trained on; a removed or moved language that breaks this is refused
with its old and new place and what to do. `run_model.check_run_folder` (the real start and the dry run)
calls it, so `--dry-run` refuses what the start refuses and plans what it trains.

`open_grown` makes the run's record from the plan: in the earlier run folder itself (--resume, or --grow on
the same folder: its record adopts the new tree), or in a new one (--grow OLD with another run name: the
kept nodes' folders, evaluations and exports are hard-linked from OLD, their records copied and marked
`reused_from`). Either way the manifest's "grown" list says what came from where.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from hql_ray.outputs import layout
from hql_ray.outputs.manifest import Manifest, NodeRecord, run_tree
from hql_ray.settings.config import Config
from hql_ray.settings.errors import ConfigError
from hql_ray.settings.records import JsonRecord
from hql_ray.settings.tree import LanguageTree


@dataclass(frozen=True)
class Growth:
    """What a start keeps of the earlier run and what it trains (node ids in tree order)."""

    source: Path  # the earlier run's folder (this run's own when it grows in place)
    in_place: bool
    kept: tuple[str, ...]  # finished nodes reused as they are
    new: tuple[str, ...]  # nodes the earlier tree did not have
    retrain: tuple[str, ...]  # finished nodes trained again: --retrain's and the nodes below them
    added: tuple[str, ...]  # languages the earlier tree did not have
    reset: tuple[str, ...] = ()  # finished nodes trained again because -sv without --resume reuses only its own

    @property
    def grows(self) -> bool:
        """Whether the start changes the earlier run beyond a plain --resume."""
        return bool(self.new or self.retrain or self.added or not self.in_place)


@dataclass
class GrowthRecord(JsonRecord):
    """One growth of a run, as its manifest's "grown" list keeps it."""

    at: float = 0.0
    source: str = ""  # the earlier run folder
    source_run_id: str = ""
    added_languages: list[str] = field(default_factory=list)
    new_nodes: list[str] = field(default_factory=list)
    kept_nodes: list[str] = field(default_factory=list)
    retrained_nodes: list[str] = field(default_factory=list)


RETRAIN_NEEDS_RUN = ("--retrain retrains nodes of an earlier run: add --resume (this run folder) or --grow RUN "
                     "(another one)")


def source_folder(cfg: Config) -> Path | None:
    """--grow's earlier run folder (absolute), or None."""
    return Path(cfg.run.grow).expanduser().absolute() if cfg.run.grow else None


def retrain_nodes(cfg: Config, tree: LanguageTree) -> set[str]:
    """--retrain's nodes (by value, id or language code, as -sv) and every node below them."""
    chosen = tree.skip_nodes(cfg.tree.retrain, flag="tree.retrain (--retrain)")
    return chosen | {d.id for n in chosen for d in tree.descendants(n)}


def place(tree: LanguageTree, code: str) -> tuple[str, ...]:
    """A language's nodes, root first, its leaf last."""
    leaf = tree.leaf_for(code)
    return tuple(a.id for a in tree.ancestors(leaf.id)) + (leaf.id,)


def plan_growth(cfg: Config, tree: LanguageTree, skipped: set[str], old: Manifest) -> Growth:
    """What this start keeps of the run recorded in `old` (ConfigError where the new tree does not fit)."""
    retrain = retrain_nodes(cfg, tree)
    if retrain & skipped:
        raise ConfigError(f"--retrain and -sv name the same node(s): {', '.join(sorted(retrain & skipped))}; "
                          "a node is either trained again or skipped")
    source = old.path.parent.absolute()
    in_place = source == cfg.run_dir.absolute()
    reuse = cfg.run.resume or cfg.run.grow is not None  # else -sv alone: only the skipped nodes are reused
    if retrain and not reuse:
        raise ConfigError(RETRAIN_NEEDS_RUN)
    done = {n for n, v in old.nodes.items() if v.status == "done"}
    kept = [n for n in tree.nodes if n in done and n not in retrain and (reuse or n in skipped)]
    old_tree, _ = run_tree(old)
    _check_fit(old, old_tree, tree, set(kept), source)
    old_codes = {lang.code for lang in old_tree.languages}
    return Growth(source, in_place, tuple(kept), tuple(n for n in tree.nodes if n not in old.nodes),
                  tuple(n for n in tree.nodes if n in done and n in retrain),
                  tuple(lang.code for lang in tree.languages if lang.code not in old_codes),
                  tuple(n for n in tree.nodes if n in done and n not in kept and n not in skipped | retrain))


def misfits(old: Manifest, tree: LanguageTree, kept: set[str]) -> dict[str, str]:
    """Kept nodes that do not fit the new tree -> why: another parent, a language it was trained on no
    longer below it, or (a leaf) a language below it that it was not trained on."""
    out = {}
    for node_id in [n for n in tree.nodes if n in kept]:  # (tree order)
        node, entry = tree.nodes[node_id], old.nodes[node_id]
        lost = sorted(set(entry.seen_languages) - set(node.codes))
        gained = sorted(set(node.codes) - set(entry.seen_languages))
        if node.parent != entry.parent:
            out[node_id] = f"its parent was {entry.parent or 'none (a root)'}, now {node.parent or 'none (a root)'}"
        elif lost:
            out[node_id] = f"it was trained on {', '.join(lost)}, no longer below it"
        elif node.is_leaf and gained:
            out[node_id] = f"it is the leaf of {', '.join(gained)} now, but was trained without"
    return out


def _path(nodes) -> str:
    return " > ".join(nodes)


MAX_LINES = 6  # languages and nodes named in the error (a changed level moves every language)


def _check_fit(old: Manifest, old_tree: LanguageTree, tree: LanguageTree, kept: set[str], source: Path) -> None:
    bad = misfits(old, tree, kept)
    if not bad:
        return
    old_codes = {lang.code for lang in old_tree.languages}
    lines = []
    for lang in old_tree.languages + [x for x in tree.languages if x.code not in old_codes]:
        before = place(old_tree, lang.code) if lang.code in old_codes else None
        after = place(tree, lang.code) if lang.code in {x.code for x in tree.languages} else None
        if before == after or not bad.keys() & set((before or ()) + (after or ())):
            continue
        if after is None:
            lines.append(f"language {lang.code} ({lang.name}) is removed: the earlier run trained it at "
                         f"{_path(before)}; {tree.path} does not list it")
        elif before is None:
            lines.append(f"language {lang.code} ({lang.name}) is added at {_path(after)}, whose leaf "
                         f"{after[-1]} the earlier run trained without it")
        else:
            lines.append(f"language {lang.code} ({lang.name}) moved: the earlier run trained it at "
                         f"{_path(before)}; {tree.path} puts it at {_path(after)}")
    top = [n for n in bad if not any(a.id in bad for a in tree.ancestors(n))]
    if len(lines) > MAX_LINES:
        lines = lines[:MAX_LINES] + [f"and {len(lines) - MAX_LINES} more language(s)"]
    shown = [f"{n} ({why})" for n, why in bad.items()]
    if len(shown) > MAX_LINES:
        shown = shown[:MAX_LINES] + [f"and {len(shown) - MAX_LINES} more"]
    raise ConfigError(
        f"the tree does not fit the finished nodes of {source}: " + "; ".join(lines)
        + ". Nodes that no longer fit: " + "; ".join(shown)
        + ". Put the language(s) back where the earlier run had them, or train these nodes again with "
        f"--retrain {' '.join(top)} (the nodes below them train again too), or train the new tree as a "
        "new run (another -sn, without --resume or --grow)")


# ---- the record ------------------------------------------------------------------------------------
def open_grown(cfg: Config, tree: LanguageTree, old: Manifest, growth: Growth) -> Manifest:
    """The run's record for `growth` of the run in `old`: that record itself (in place), or a new one in
    cfg's run folder whose kept nodes come from the earlier folder."""
    seen = {n: old.nodes[n].seen_languages for n in growth.kept}  # (before the record takes the new tree)
    if growth.in_place:
        manifest = old
        manifest.upgrade(tree)
        manifest.adopt_tree(tree)
    else:
        manifest = Manifest.create(cfg.run_dir.absolute() / "manifest.json", tree, cfg.to_dict(), cfg.run_name)
    for node_id in growth.kept:
        earlier = old.nodes[node_id]
        fields = {}
        if not growth.in_place:
            _link_outputs(growth.source, manifest.path.parent, node_id, earlier)
            fields = {**_kept_fields(earlier), "reused_from": str(growth.source)}
        manifest.update(node_id, **{**fields, "trained_languages": seen[node_id]})
    for node_id in growth.retrain + growth.reset:  # (new Ray Train run names: not the earlier checkpoints)
        manifest.update(node_id, status="pending", adapter=None, trained_languages=[],
                        retrained=manifest.nodes[node_id].retrained + 1)
    if growth.grows:
        record = GrowthRecord(time.time(), str(growth.source), old.run_id, list(growth.added), list(growth.new),
                              list(growth.kept), list(growth.retrain))
        manifest.data.setdefault("grown", []).append(record.to_json())
        if growth.in_place:  # the record's config says which tree the run now has
            manifest.data["config"]["tree"] = cfg.to_dict()["tree"]
        manifest.save()
    return manifest


TREE_FIELDS = ("id", "name", "level", "depth", "parent", "children", "languages", "extra")


def _kept_fields(earlier: NodeRecord) -> dict:
    """What a kept node's record brings from the earlier run: all but its place in the tree."""
    return {f.name: getattr(earlier, f.name) for f in dataclasses.fields(earlier) if f.name not in TREE_FIELDS}


def _link_outputs(source: Path, target: Path, node_id: str, earlier: NodeRecord) -> None:
    """A kept node's folder (its adapter), evaluation files and exports, hard-linked from the earlier run
    folder (copied where links cannot be made): the same bytes, no second copy on disk."""
    parts = [Path("nodes") / node_id, Path("evaluation") / node_id]
    parts += [layout.language_dir(code) for code in earlier.exported]
    if earlier.node_export is not None:
        parts.append(layout.node_dir(node_id))
    for part in parts:
        if (source / part).is_dir():
            if (target / part).exists():
                shutil.rmtree(target / part)
            shutil.copytree(source / part, target / part, copy_function=_link_or_copy)


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another file system, or links not allowed
        shutil.copy2(src, dst)
