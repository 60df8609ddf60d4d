"""`hql-ray report`: runs read from their manifests, their score tables (`hql_ray.outputs.results`), notes on what
is missing, plots (`hql_ray.outputs.plots`, given the data) and the files report.md|csv, path_scores.csv.

A report can be made of a finished run, a failed one, or one still running. Scores are keyed by
(node, language, test set); a language's score on a test set is its leaf node's, as in the run's
results.md. A run of an older hql-ray shows its one score per language as test set "union".
"""

from __future__ import annotations

import socket
from itertools import islice
from pathlib import Path

from dataclasses import dataclass, field

from hql_ray.outputs.manifest import RunRecord, atomic_write_text, read_manifest, run_tree
from hql_ray.outputs.results import (LEGACY_NOTE, MANY_LANGUAGES, ScoreRow, means_markdown, not_computed_notes, num_or_none, path_csv,
                                     path_markdown, path_scores, path_second_metric, score_rows, scores_csv,
                                     scores_markdown, signature_notes)
from hql_ray.scoring.evaluation import TEXT_FILES
from hql_ray.settings.errors import InputError
from hql_ray.settings.records import LEGACY_TEST_SET, METRIC_NAMES, Sample, TestSetScores


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
        st = entry.status
        if st == "failed":
            err = str(entry.error or "").strip().splitlines()
            record.notes.append(f"node {node_id} failed" + (f": {err[-1][:200]}" if err else ""))
        elif st != "done":
            others.setdefault(str(st), []).append(node_id)
    for st, ids in others.items():
        record.notes.append(f"{len(ids)} node(s) {st}: {', '.join(ids)}")
    for node_id, entry in manifest.nodes.items():
        error = entry.metrics.evaluation_error if entry.metrics else None
        if error:
            record.notes.append(f"node {node_id}: evaluation failed (its adapter was kept): {str(error)[:200]}")
    if any(LEGACY_TEST_SET in sets for entry in manifest.nodes.values() if entry.metrics
           for sets in entry.metrics.languages.values()):
        record.notes.append(LEGACY_NOTE)
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


@dataclass
class RunSummary:
    run: str
    path: str
    status: str | None
    done: int
    nodes: int
    wall_s: float | None
    train_s: float
    slots: int | None
    gpu: bool | None
    base: str | None
    mode: str | None


def run_summary(run: RunRecord) -> RunSummary:
    nodes = list(run.nodes.values())
    starts = [n.started_at for n in nodes if num_or_none(n.started_at) is not None]
    ends = [n.finished_at for n in nodes if num_or_none(n.finished_at) is not None]
    slots = run.manifest.data.get("slots") or {}
    model = (run.manifest.data.get("config") or {}).get("model") or {}
    return RunSummary(run.label, str(run.path), run.manifest.data.get("status"),
                      sum(1 for n in nodes if n.status == "done"), len(nodes),
                      (max(ends) - min(starts)) if starts and ends else None,
                      sum((n.metrics.train_seconds or 0.0) for n in nodes if n.metrics),
                      slots.get("total"), slots.get("gpu"), model.get("base"), model.get("mode"))


def summary_markdown(runs: list[RunRecord]) -> str:
    lines = ["| run | status | nodes done | wall time | node train time | slots | model |", "|---|---|---|---|---|---|---|"]
    for run in runs:
        s = run_summary(run)
        slots = "-" if s.slots is None else f"{s.slots} {'GPU' if s.gpu else 'CPU'}"
        wall = "-" if s.wall_s is None else f"{s.wall_s:.0f} s"
        lines.append(f"| {s.run} | {s.status} | {s.done}/{s.nodes} | {wall} | {s.train_s:.0f} s | "
                     f"{slots} | {s.base} ({s.mode}) |")
    return "\n".join(lines)


# ---- examples: sources, hypotheses and references the scores come from ---------------------------------
def _first_lines(path: Path, n: int) -> list[str]:
    with path.open(encoding="utf-8") as f:
        return [line.rstrip("\n") for line in islice(f, n)]


@dataclass
class Examples:
    """A node's first test examples of a language and test set: where they come from, and why not the files."""

    examples: list[Sample] = field(default_factory=list)
    where: str = "manifest"  # the texts' folder (relative to the run), or "manifest" (its few samples)
    note: str | None = None


def read_examples(run: RunRecord, node_id: str, code: str, test_set: str, n: int) -> Examples:
    """The first `n` (source, hypothesis, reference) of a node's language and test set, from the line-aligned
    files evaluation wrote (evaluation/<node>/<code>/<test set>/, as the scores' `texts` names them); without
    the files (another host's disk, an older run), the few samples the manifest keeps."""
    metrics = run.nodes[node_id].metrics
    record = ((metrics.languages if metrics else {}).get(code) or {}).get(test_set) or TestSetScores()
    texts = record.texts
    folder = run.path / ((texts.dir if texts else None) or f"evaluation/{node_id}/{code}/{test_set}")
    files = {key: folder / name for key, name in TEXT_FILES.items()}
    if all(f.is_file() for f in files.values()):
        columns = {key: _first_lines(f, n) for key, f in files.items()}
        rows = [Sample(s, h, r) for s, h, r in zip(columns["sources"], columns["hypotheses"], columns["references"])]
        return Examples(rows, str(folder.relative_to(run.path)))
    samples = record.samples[:n]
    why = (texts.error if texts else None) or "its text files are not in the run folder"
    if texts and texts.host and texts.host != socket.gethostname():
        why = f"its text files were written on {texts.host}"
    return Examples(samples, "manifest",
                    f"{why}; " + (f"the {len(samples)} sample(s) the manifest keeps" if samples else "no samples kept"))


def _one_line(text, limit: int = 400) -> str:
    text = " ".join(str(text if text is not None else "").split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def examples_markdown(runs: list[RunRecord], rows: list[ScoreRow], n: int) -> str:
    """`n` examples per language and test set at the leaves (each run's language leaf), as the report's section."""
    by_label = {run.label: run for run in runs}
    parts = ["## Examples", "",
             f"The first {n} test example(s) per language and test set, at the language's leaf node: the model "
             "input (source), the greedy output scored (hypothesis) and the reference.", ""]
    for row in rows:
        run = by_label.get(row.run)
        if run is None or row.test_set is None or row.node not in run.nodes:
            continue
        got = read_examples(run, row.node, row.code, row.test_set, n)
        label = f"{row.run}: " if len(runs) > 1 else ""
        parts += [f"### {label}{row.code} ({row.language}), {row.test_set}, node {row.node}", ""]
        if got.note:
            parts += [f"({got.note})", ""]
        elif got.where:
            parts += [f"From `{got.where}/`.", ""]
        for i, ex in enumerate(got.examples, 1):
            parts += [f"{i}. source: {_one_line(ex.source)}",
                      f"   hypothesis: {_one_line(ex.hypothesis)}",
                      f"   reference: {_one_line(ex.reference)}"]
        parts.append("")
    return "\n".join(parts)


# ---- the whole report ---------------------------------------------------------------------------
def _write(path: Path, text: str) -> Path:
    atomic_write_text(path, text)  # readable by all, like the manifest
    return path


def default_out_dir(run_dirs: list[str | Path]) -> Path:
    return Path(run_dirs[0]) if len(run_dirs) == 1 else Path("report")


def build_markdown(runs: list[RunRecord], rows: list[ScoreRow], plots: dict[str, str], out_dir: Path,
                   examples: int = 0) -> str:
    title = f"Report: run {runs[0].label}" if len(runs) == 1 else "Report: " + ", ".join(r.label for r in runs)
    parts = [f"# {title}", "", summary_markdown(runs), ""]
    if len({r.code for r in rows}) > MANY_LANGUAGES:  # the per-language table is hundreds of rows: means first
        parts += ["## Means per test set", "", means_markdown(rows, runs), "",
                  "A mean is left out (`-`) where a language lacks the score. Every language follows.", ""]
    parts += ["## Scores per language and test set (the language's leaf node)", "", scores_markdown(rows, runs), "",
             "spBLEU: sacreBLEU on flores200 SentencePiece pieces (the original's `bleu`); BLEU (13a): the original's "
             "`old_bleu`; LID: mean probability x100 of the language's label (fastText, GlotLID in the paper); LID "
             "diff: the hypotheses' LID minus the references'. References: the test sets' raw sentences (the original "
             "decoded them from the mT5-tokenized labels). `not computed`: see below; `-`: no score.", ""]
    if len(runs) > 1:
        parts += ["Bold: the best score for that language and test set among the runs. The CSV's `best` column "
                  "marks the run with the best chrF++ (ties: spBLEU, BLEU 13a).", ""]
    paths = path_scores(runs[0]) if len(runs) == 1 else []
    if paths and max(len(p.path) for p in paths) == 1:
        parts += ["One level: every language's root is its leaf (no root-to-leaf path to show).", ""]
    elif paths:
        second = METRIC_NAMES[path_second_metric(paths)]
        parts += ["## From root to leaf", "", f"chrF++ / {second} (parsing runs: smatch F1) of each language and "
                  "test set at each node on its path (`-`: the node has no scores for it, e.g. eval.at_nodes=leaves, "
                  "or it did not finish).", "",
                  path_markdown(paths, runs[0].tree.levels), ""]
    label = (lambda r: f"{r.run} ") if len(runs) > 1 else (lambda r: "")
    not_computed = not_computed_notes(rows, label)
    if not_computed:
        parts += ["## Not computed", "", *not_computed, ""]
    sigs = signature_notes(rows)
    if sigs:
        parts += ["## Signatures", "", *sigs, ""]
    notes = [f"- {run.label}: {note}" for run in runs for note in run.notes]
    if notes:
        parts += ["## Notes", "", "Scores shown are what exists; missing values are `-`.", "", *notes, ""]
    if examples > 0:
        parts += [examples_markdown(runs, rows, examples)]
    if plots:
        parts += ["## Plots", ""]
        for title_, path in plots.items():
            rel = Path(path).relative_to(out_dir) if Path(path).is_relative_to(out_dir) else Path(path)
            parts.append(f"![{title_}]({rel.as_posix()})")
        parts.append("")
    return "\n".join(parts)


def write_report(run_dirs: list[str | Path], out_dir: str | Path | None = None, *, with_plots: bool = True,
                 examples: int = 0) -> dict:
    """Tables (report.md, report.csv, path_scores.csv for one run) and PNG plots into out_dir; with
    `examples` > 0, that many source/hypothesis/reference triples per language and test set (`examples_markdown`).

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
        from hql_ray.outputs import plots as plots_lib

        plots = plots_lib.draw_all(runs, rows, out / "plots", paths=path_scores(runs[0]) if len(runs) == 1 else None)
    markdown = build_markdown(runs, rows, plots, out, examples)
    files.append(_write(out / "report.md", markdown))
    files.append(_write(out / "report.csv", scores_csv(rows)))
    if len(runs) == 1:
        files.append(_write(out / "path_scores.csv", path_csv(path_scores(runs[0]))))
    files += [Path(p) for p in plots.values()]
    return {"markdown": markdown, "files": files, "runs": runs}
