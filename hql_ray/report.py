"""Results people can read: score tables across runs, root-to-leaf paths, notes on what is missing.

Everything here is data (no drawing: that is `hql_ray.plots`), read from each run's manifest.json,
so a report can be made of a finished run, a failed one, or one still running. The per-language
score of a run is its leaf node's score (`results.language_rows`), as in the run's results.md.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from hql_ray.errors import InputError
from hql_ray.manifest import Manifest, atomic_write_text
from hql_ray.results import language_rows
from hql_ray.tree import Language, LanguageTree, TreeNode, load_tree

METRICS = ("bleu", "chrf++", "spbleu", "smatch")  # smatch = F1, for text2amr (parsing) runs
METRIC_NAMES = {"bleu": "BLEU", "chrf++": "chrF++", "spbleu": "spBLEU", "smatch": "smatch F1"}
CSV_COLUMNS = ["run", "code", "language", "node", "node_status", "bleu", "chrf++", "spbleu", "smatch", "n_test",
               "val_loss", "best", "best_metrics"]


@dataclass
class RunRecord:
    """One run as the report sees it: its manifest, its tree and what is worth a note."""

    path: Path
    label: str
    manifest: Manifest
    tree: LanguageTree
    notes: list[str] = field(default_factory=list)

    @property
    def nodes(self) -> dict[str, dict]:
        return self.manifest.nodes


# ---- loading ------------------------------------------------------------------------------------
def read_manifest(run_dir: str | Path) -> Manifest:
    """RUN_DIR/manifest.json (RUN_DIR may also name the file itself); InputError if absent or broken."""
    path = Path(run_dir)
    mpath = path if path.name == "manifest.json" and path.is_file() else path / "manifest.json"
    if not path.exists():
        raise InputError("run folder does not exist", path=path)
    if not mpath.is_file():
        raise InputError("no manifest.json here: not a hql-ray run folder", path=path)
    try:
        data = json.loads(mpath.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise InputError(f"manifest is not valid JSON: {err.msg}", path=mpath, line=err.lineno) from None
    if not isinstance(data, dict) or not isinstance(data.get("nodes"), dict):
        raise InputError("manifest has no 'nodes' table: not a hql-ray run record", path=mpath)
    return Manifest(mpath, data)


def tree_from_nodes(manifest: Manifest) -> LanguageTree:
    """The run's tree rebuilt from the manifest alone (used when the tree file is gone or changed).

    Display names come from leaf nodes of the `language` level (one language each); else the code.
    """
    nodes = manifest.nodes
    names: dict[str, str] = {}
    for entry in nodes.values():
        if entry.get("level") == "language" and len(entry.get("languages") or []) == 1:
            names[entry["languages"][0]] = entry["name"]
    codes: list[str] = []
    for entry in nodes.values():
        if entry.get("parent") is None:
            codes += [c for c in entry.get("languages") or [] if c not in codes]
    langs = {c: Language(c, names.get(c, c)) for c in codes}
    tree_nodes = {
        nid: TreeNode(id=nid, name=e.get("name", nid), level=e.get("level", "?"), depth=int(e.get("depth", 0)),
                      parent=e.get("parent"), children=list(e.get("children") or []),
                      languages=[langs.get(c, Language(c, c)) for c in e.get("languages") or []])
        for nid, e in nodes.items()
    }
    info = manifest.data.get("tree") or {}
    return LanguageTree(str(info.get("file", "")), list(info.get("levels") or []), list(langs.values()), tree_nodes)


def run_tree(manifest: Manifest) -> tuple[LanguageTree, str | None]:
    """The run's tree from its tree file when that still matches the run, else from the manifest.

    Returns (tree, note); the note says why the fallback was used (None when the file served).
    """
    info = manifest.data.get("tree") or {}
    file = info.get("file")
    try:
        tree = load_tree(file, info.get("levels"))
    except Exception as err:  # noqa: BLE001 - any problem with the file: use the run's own record
        return tree_from_nodes(manifest), f"tree file {file} unreadable ({err}); names rebuilt from the manifest"
    if set(tree.nodes) != set(manifest.nodes):
        return tree_from_nodes(manifest), f"tree file {file} changed since the run; nodes taken from the manifest"
    return tree, None


def load_run(run_dir: str | Path, label: str | None = None) -> RunRecord:
    manifest = read_manifest(run_dir)
    tree, note = run_tree(manifest)
    path = manifest.path.parent
    record = RunRecord(path, label or str(manifest.data.get("run") or path.name), manifest, tree)
    if note:
        record.notes.append(note)
    status = manifest.data.get("status")
    if status not in ("done", None):
        record.notes.append(f"run status is {status!r}")
    others: dict[str, list[str]] = {}
    for node_id, entry in manifest.nodes.items():
        st = entry.get("status")
        if st == "failed":
            err = str(entry.get("error") or "").strip().splitlines()
            record.notes.append(f"node {node_id} failed" + (f": {err[-1][:200]}" if err else ""))
        elif st != "done":
            others.setdefault(str(st), []).append(node_id)
    for st, ids in others.items():
        record.notes.append(f"{len(ids)} node(s) {st}: {', '.join(ids)}")
    return record


def load_runs(run_dirs: list[str | Path]) -> list[RunRecord]:
    """Load every run; labels are the run names, made unique with the parent folder when they clash."""
    runs = [load_run(d) for d in run_dirs]
    seen: dict[str, int] = {}
    for run in runs:
        seen[run.label] = seen.get(run.label, 0) + 1
    for run in runs:
        if seen[run.label] > 1:
            run.label = f"{run.path.parent.name}/{run.label}"
    counts: dict[str, int] = {}
    for run in runs:  # still equal (same parent folder name): number them
        counts[run.label] = counts.get(run.label, 0) + 1
        if counts[run.label] > 1:
            run.label = f"{run.label}#{counts[run.label]}"
    return runs


# ---- tables -------------------------------------------------------------------------------------
def _num(value) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def score_rows(runs: list[RunRecord]) -> list[dict]:
    """One row per (language, run): the leaf's scores, with `best` marks across runs.

    `best_metrics` lists the metrics where this run has the highest score for the language (among
    runs that have one); `best` is the run with the best chrF++ (ties: BLEU; parsing runs: smatch).
    Languages in the order of the first run that has them.
    """
    codes: list[str] = []
    names: dict[str, str] = {}
    for run in runs:
        for lang in run.tree.languages:
            if lang.code not in codes:
                codes.append(lang.code)
                names[lang.code] = lang.name
    per_run = {run.label: {r["code"]: r for r in language_rows(run.manifest, run.tree)} for run in runs}
    rows = []
    for code in codes:
        group = []
        for run in runs:
            r = per_run[run.label].get(code)
            if r is None:
                continue
            leaf_scores = ((run.nodes[r["node"]].get("metrics") or {}).get("languages") or {}).get(code) or {}
            r = {**r, "smatch": leaf_scores.get("f1")}
            group.append({
                "run": run.label, "code": code, "language": names[code], "node": r["node"],
                "node_status": run.nodes[r["node"]].get("status"),
                **{m: _num(r[m]) for m in METRICS},
                "n_test": r["n_test"], "val_loss": _num(r["val_loss"]),
            })
        for m in METRICS:
            values = [g[m] for g in group if g[m] is not None]
            top = max(values) if values else None
            for g in group:
                g.setdefault("_best", [])
                if top is not None and g[m] == top:
                    g["_best"].append(m)
        ranked = [g for g in group if g["chrf++"] is not None or g["smatch"] is not None]
        winner = max(ranked, key=lambda g: tuple(-1.0 if g[m] is None else g[m] for m in ("chrf++", "smatch", "bleu")),
                     default=None)
        for g in group:
            g["best"] = g is winner
            g["best_metrics"] = ";".join(g.pop("_best"))
        rows.extend(group)
    return rows


def _fmt(value, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def present_metrics(rows: list[dict]) -> list[str]:
    """The metrics some run has (spBLEU needs the flores200 model; smatch is for parsing runs);
    BLEU and chrF++ when there is nothing at all."""
    found = [m for m in METRICS if any(r[m] is not None for r in rows)]
    if "bleu" in found or "chrf++" in found:
        found = list(dict.fromkeys(["bleu", "chrf++", *found]))
    return [m for m in METRICS if m in found] or ["bleu", "chrf++"]


def means(rows: list[dict], runs: list[RunRecord], metrics: list[str]) -> dict[str, dict[str, float | None]]:
    """Mean over languages per run and metric; None when a language lacks the score (not comparable)."""
    out: dict[str, dict[str, float | None]] = {}
    for run in runs:
        mine = [r for r in rows if r["run"] == run.label]
        out[run.label] = {}
        for m in metrics:
            values = [r[m] for r in mine]
            ok = mine and all(v is not None for v in values)
            out[run.label][m] = sum(values) / len(values) if ok else None
    return out


def scores_markdown(rows: list[dict], runs: list[RunRecord]) -> str:
    """Wide table: a row per language, for each run its metrics; the best value per language in bold."""
    metrics = present_metrics(rows)
    multi = len(runs) > 1
    head = ["code", "language"]
    for run in runs:
        for m in metrics:
            head.append(f"{run.label} {METRIC_NAMES[m]}" if multi else METRIC_NAMES[m])
    if not multi:
        head += ["node", "n_test"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    codes = list(dict.fromkeys(r["code"] for r in rows))
    for code in codes:
        mine = {r["run"]: r for r in rows if r["code"] == code}
        first = next(iter(mine.values()))
        cells = [code, first["language"]]
        for run in runs:
            r = mine.get(run.label)
            for m in metrics:
                text = _fmt(r[m]) if r else "-"
                if multi and r and r[m] is not None and m in r["best_metrics"].split(";"):
                    text = f"**{text}**"
                cells.append(text)
        if not multi:
            cells += [first["node"] + ("" if first["node_status"] == "done" else f" ({first['node_status']})"),
                      str(first["n_test"] if first["n_test"] is not None else "-")]
        lines.append("| " + " | ".join(cells) + " |")
    avg = means(rows, runs, metrics)
    cells = ["**mean**", ""]
    for run in runs:
        cells += [_fmt(avg[run.label][m]) for m in metrics]
    if not multi:
        cells += ["", ""]
    lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def scores_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({**r, "best": int(bool(r["best"])),
                         **{m: "" if r[m] is None else f"{r[m]:.4f}" for m in (*METRICS, "val_loss")},
                         "n_test": "" if r["n_test"] is None else r["n_test"]})
    return buf.getvalue()


def path_scores(run: RunRecord) -> list[dict]:
    """For each language, its scores at every node of its root-to-leaf path (None: not scored there).

    Inner nodes have per-language scores only when the run evaluated every node (eval.at_nodes=all).
    """
    out = []
    for lang in run.tree.languages:
        leaf = run.tree.leaf_for(lang.code)
        chain = [*run.tree.ancestors(leaf.id), leaf]
        steps = []
        for node in chain:
            entry = run.nodes.get(node.id, {})
            scores = ((entry.get("metrics") or {}).get("languages") or {}).get(lang.code) or {}
            steps.append({"node": node.id, "name": node.name, "level": node.level, "depth": node.depth,
                          "status": entry.get("status"), "chrf++": _num(scores.get("chrf++")),
                          "bleu": _num(scores.get("bleu")), "smatch": _num(scores.get("f1"))})
        out.append({"code": lang.code, "language": lang.name, "path": steps})
    return out


def path_markdown(paths: list[dict], levels: list[str]) -> str:
    """Languages x levels; each cell `chrF++ / BLEU (node name)` at that depth of the language's path."""
    depth = max((len(p["path"]) for p in paths), default=0)
    heads = [levels[i] if i < len(levels) else f"depth {i}" for i in range(depth)]
    lines = ["| code | language | " + " | ".join(heads) + " |", "|" + "---|" * (2 + depth)]
    for p in paths:
        cells = []
        for i in range(depth):
            if i >= len(p["path"]):
                cells.append("")
                continue
            s = p["path"][i]
            if s["smatch"] is not None and s["chrf++"] is None:  # a parsing run
                cells.append(f"{_fmt(s['smatch'], 1)} ({s['name']})")
            else:
                cells.append(f"{_fmt(s['chrf++'], 1)} / {_fmt(s['bleu'], 1)} ({s['name']})")
        lines.append(f"| {p['code']} | {p['language']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def path_csv(paths: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["code", "language", "depth", "level", "node", "status", "chrf++", "bleu", "smatch"])
    for p in paths:
        for s in p["path"]:
            writer.writerow([p["code"], p["language"], s["depth"], s["level"], s["node"], s["status"],
                             "" if s["chrf++"] is None else f"{s['chrf++']:.4f}",
                             "" if s["bleu"] is None else f"{s['bleu']:.4f}",
                             "" if s["smatch"] is None else f"{s['smatch']:.4f}"])
    return buf.getvalue()


def run_summary(run: RunRecord) -> dict:
    nodes = list(run.nodes.values())
    starts = [n["started_at"] for n in nodes if _num(n.get("started_at")) is not None]
    ends = [n["finished_at"] for n in nodes if _num(n.get("finished_at")) is not None]
    slots = run.manifest.data.get("slots") or {}
    return {
        "run": run.label, "path": str(run.path), "status": run.manifest.data.get("status"),
        "done": sum(1 for n in nodes if n.get("status") == "done"), "nodes": len(nodes),
        "wall_s": (max(ends) - min(starts)) if starts and ends else None,
        "train_s": sum(_num((n.get("metrics") or {}).get("train_seconds")) or 0.0 for n in nodes),
        "slots": slots.get("total"), "gpu": slots.get("gpu"),
        "base": ((run.manifest.data.get("config") or {}).get("model") or {}).get("base"),
        "mode": ((run.manifest.data.get("config") or {}).get("model") or {}).get("mode"),
    }


def summary_markdown(runs: list[RunRecord]) -> str:
    lines = ["| run | status | nodes done | wall time | node train time | slots | model |", "|---|---|---|---|---|---|---|"]
    for run in runs:
        s = run_summary(run)
        slots = "-" if s["slots"] is None else f"{s['slots']} {'GPU' if s['gpu'] else 'CPU'}"
        wall = "-" if s["wall_s"] is None else f"{s['wall_s']:.0f} s"
        lines.append(f"| {s['run']} | {s['status']} | {s['done']}/{s['nodes']} | {wall} | {s['train_s']:.0f} s | "
                     f"{slots} | {s['base']} ({s['mode']}) |")
    return "\n".join(lines)


# ---- the whole report ---------------------------------------------------------------------------
def _write(path: Path, text: str) -> Path:
    """Atomic write, then the usual file mode (the temp file behind it is created 0600)."""
    atomic_write_text(path, text)
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)
    return path


def default_out_dir(run_dirs: list[str | Path]) -> Path:
    return Path(run_dirs[0]) if len(run_dirs) == 1 else Path("report")


def build_markdown(runs: list[RunRecord], rows: list[dict], plots: dict[str, str], out_dir: Path) -> str:
    title = f"Report: run {runs[0].label}" if len(runs) == 1 else "Report: " + ", ".join(r.label for r in runs)
    parts = [f"# {title}", "", summary_markdown(runs), "", "## Scores per language (test split, the language's leaf node)", "",
             scores_markdown(rows, runs), ""]
    if len(runs) > 1:
        parts += ["Bold: the best score for that language among the runs. The CSV's `best` column marks the run",
                  "with the best chrF++ (ties: BLEU).", ""]
    paths = path_scores(runs[0]) if len(runs) == 1 else []
    if paths and max(len(p["path"]) for p in paths) == 1:
        parts += ["One level: every language's root is its leaf (no root-to-leaf path to show).", ""]
    elif paths:
        parts += ["## From root to leaf", "", "chrF++ / BLEU (parsing runs: smatch F1) of each language at each "
                  "node on its path (`-`: the node has no scores for it, e.g. eval.at_nodes=leaves, or it did not "
                  "finish).", "",
                  path_markdown(paths, runs[0].tree.levels), ""]
    notes = [f"- {run.label}: {note}" for run in runs for note in run.notes]
    if notes:
        parts += ["## Notes", "", "Scores shown are what exists; missing values are `-`.", "", *notes, ""]
    if plots:
        parts += ["## Plots", ""]
        for title_, path in plots.items():
            rel = Path(path).relative_to(out_dir) if Path(path).is_relative_to(out_dir) else Path(path)
            parts.append(f"![{title_}]({rel.as_posix()})")
        parts.append("")
    return "\n".join(parts)


def write_report(run_dirs: list[str | Path], out_dir: str | Path | None = None, *, with_plots: bool = True) -> dict:
    """Tables (report.md, report.csv, path_scores.csv for one run) and PNG plots into out_dir.

    Returns {"markdown": text, "files": [paths written], "runs": [RunRecord]}.
    """
    if not run_dirs:
        raise InputError("no run folder given")
    runs = load_runs(list(run_dirs))
    out = Path(out_dir) if out_dir is not None else default_out_dir(run_dirs)
    out.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    plots: dict[str, str] = {}
    rows = score_rows(runs)
    if with_plots:
        from hql_ray import plots as plots_lib

        plots = plots_lib.draw_all(runs, rows, out / "plots")
    markdown = build_markdown(runs, rows, plots, out)
    files.append(_write(out / "report.md", markdown))
    files.append(_write(out / "report.csv", scores_csv(rows)))
    if len(runs) == 1:
        files.append(_write(out / "path_scores.csv", path_csv(path_scores(runs[0]))))
    files += [Path(p) for p in plots.values()]
    return {"markdown": markdown, "files": files, "runs": runs}
