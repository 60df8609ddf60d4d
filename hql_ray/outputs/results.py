"""The score tables, one home for both readers: the driver's results.md|csv (one run, written at its end)
and `hql-ray report`'s tables across runs and along root-to-leaf paths.

Every score is keyed by (node, language, test set): a language's row per test set holds its leaf node's
scores (`language_rows`). Metrics are named as the paper names them (hql_ray.scoring.metrics): spBLEU, BLEU (13a),
chrF++, LID, LID diff; smatch F1 for parsing runs. A metric that was not computed shows "not computed"
and the reason is listed under the table; "-" means no score exists (the node failed, or did not evaluate).
Runs of an older hql-ray have one score per language on the union of its test splits: test set "union".
"""

from __future__ import annotations

import csv
import io
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

from hql_ray.outputs.manifest import Manifest, RunRecord, atomic_write_text
from hql_ray.data.corpus import order_key_of_test_set as test_set_key  # flores, ldc2020t07, amr3, others
from hql_ray.scoring.metrics import merge_lid_baseline
from hql_ray.settings.errors import InputError
from hql_ray.settings.records import LEGACY_TEST_SET, METRIC_NAMES, NodeMetrics, TestSetScores
from hql_ray.settings.tree import LanguageTree

log = logging.getLogger(__name__)

METRICS = ("spbleu", "bleu_13a", "chrf++", "lid", "lid_diff", "smatch")  # smatch = F1, for text2amr runs
BEST_METRICS = ("spbleu", "bleu_13a", "chrf++", "lid", "smatch")  # higher is better (LID diff: no "best")
WINNER_ORDER = ("chrf++", "spbleu", "bleu_13a", "smatch")  # the best run of a (language, test set)
LEGACY_NOTE = (f"test set '{LEGACY_TEST_SET}': scores from an older hql-ray, one per language on the union of "
               "every corpus's test split (amr3 + flores), not the paper's test sets; its BLEU is BLEU (13a)")
NOT_COMPUTED = "not computed"
CSV_COLUMNS = ["code", "language", "test_set", "node", "n_test", *METRICS, "reference_lid", "val_loss",
               "initial_val_loss", "not_computed", "signatures"]
REPORT_COLUMNS = ["run", "code", "language", "test_set", "node", "node_status", *METRICS, "n_test", "val_loss",
                  "best", "best_metrics", "not_computed"]


def num_or_none(value) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def node_scores(metrics: NodeMetrics | None, code: str) -> dict[str, TestSetScores]:
    """{test set: scores} of one language at one node, test sets in their order."""
    sets = (metrics.languages if metrics else {}).get(code) or {}
    return {name: sets[name] for name in sorted(sets, key=test_set_key)}


@dataclass
class ScoreRow:
    """One language's scores on one test set at one node (its leaf's, in the tables), in one run."""

    code: str
    language: str
    test_set: str | None  # None: the node has no scores for the language
    node: str
    n_test: int | None = None
    scores: dict[str, float | None] = field(default_factory=dict)  # METRICS -> value
    not_computed: dict[str, str] = field(default_factory=dict)  # metric -> why
    signatures: dict[str, str] = field(default_factory=dict)
    reference_lid: float | None = None
    val_loss: float | None = None
    initial_val_loss: float | None = None
    run: str = ""  # (report) the run's label
    node_status: str = ""
    best: bool = False  # (report) the run with the best chrF++ for this language and test set
    best_metrics: list[str] = field(default_factory=list)  # (report) the metrics where this run is best

    def cell(self, metric: str, digits: int = 2) -> str:
        value = self.scores.get(metric)
        if value is not None:
            return f"{value:.{digits}f}"
        return NOT_COMPUTED if metric in self.not_computed else "-"


def scored_row(code: str, language: str, node: str, test_set: str | None, s: TestSetScores | None) -> ScoreRow:
    """A row from one (node, language, test set)'s scores, with the reasons for the metrics not computed."""
    s = s or TestSetScores()
    values = {m: s.value(m) for m in METRICS}
    reasons = {("smatch" if m == "f1" else m): why for m, why in s.not_computed.items()}
    return ScoreRow(code, language, test_set, node, s.n if test_set is not None else None, values,
                    {m: why for m, why in reasons.items() if m in METRICS and values[m] is None},
                    dict(s.signatures), num_or_none(s.reference_lid))


def language_rows(manifest: Manifest, tree: LanguageTree) -> list[ScoreRow]:
    """One row per language and test set: the scores of the language's leaf node (a language whose leaf
    has no scores still gets one row, test set None)."""
    rows = []
    for lang in tree.languages:
        leaf = tree.leaf_for(lang.code)
        metrics = manifest.nodes[leaf.id].metrics
        ancestors = tree.ancestors(leaf.id)
        root = manifest.nodes[ancestors[0].id if ancestors else leaf.id].metrics
        for test_set, scores in (node_scores(metrics, lang.code) or {None: None}).items():
            row = scored_row(lang.code, lang.name, leaf.id, test_set, scores)
            row.val_loss, row.initial_val_loss = metrics and metrics.val_loss, root and root.initial_val_loss
            rows.append(row)
    return rows


# ---- cells and notes -----------------------------------------------------------------------------------
def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def present_metrics(rows: list[ScoreRow]) -> list[str]:
    """The metrics some row has a score or a not-computed reason for, in METRICS order; a parsing run shows
    smatch only; nothing at all: the text metrics."""
    found = {m for r in rows for m in METRICS if r.scores.get(m) is not None or m in r.not_computed}
    if found - {"smatch"}:
        found |= {"bleu_13a", "chrf++"}
    return [m for m in METRICS if m in found] or ["spbleu", "bleu_13a", "chrf++"]


def not_computed_notes(rows: list[ScoreRow], label=lambda r: "") -> list[str]:
    """'- spBLEU: not computed: <why> (flores: deu_Latn, ...)', one line per metric and reason."""
    groups: dict[tuple[str, str], list[ScoreRow]] = {}
    for r in rows:
        for metric, why in r.not_computed.items():
            groups.setdefault((metric, why), []).append(r)
    lines = []
    for (metric, why), group in groups.items():
        where: dict[str, list[str]] = {}
        for r in group:
            where.setdefault(f"{label(r)}{r.test_set}", []).append(r.code)
        said = "; ".join(f"{k}: {', '.join(dict.fromkeys(v))}" for k, v in where.items())
        text = why if why.startswith(NOT_COMPUTED) else f"{NOT_COMPUTED}: {why}"
        lines.append(f"- {METRIC_NAMES[metric]}: {text} ({said})")
    return lines


def signature_notes(rows: list[ScoreRow]) -> list[str]:
    seen: dict[str, list[str]] = {}
    for r in rows:
        for metric, sig in r.signatures.items():
            if sig and sig not in seen.setdefault(metric, []):
                seen[metric].append(sig)
    return [f"- {METRIC_NAMES.get(m, m)}: `{s}`" for m in METRICS if m in seen for s in seen[m]]


def _joined(mapping: dict, sep: str) -> str:
    return "; ".join(f"{k}{sep}{v}" for k, v in mapping.items())


def _not_computed_cell(r: ScoreRow) -> str:
    return _joined({m: f"{NOT_COMPUTED}: {w}" for m, w in r.not_computed.items()}, ": ")


# ---- results.md|csv of one run -------------------------------------------------------------------------
def to_markdown(rows: list[ScoreRow], title: str) -> str:
    metrics = present_metrics(rows)
    head = ["code", "language", "test set", "node", "n", *(METRIC_NAMES[m] for m in metrics), "val_loss",
            "initial_val_loss"]
    lines = [f"# {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r.code, r.language, r.test_set or "-", r.node, _fmt(r.n_test), *(r.cell(m) for m in metrics),
                 _fmt(r.val_loss), _fmt(r.initial_val_loss)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Scores of each language on each test set at its leaf node: spBLEU (sacreBLEU, flores200 "
              "SentencePiece; the original's `bleu`), BLEU (13a) (the original's `old_bleu`), chrF++, LID (mean "
              "probability x100 of the language's label) and LID diff (the hypotheses' LID minus the "
              "references'). References are the test sets' raw sentences (the original decoded them from the "
              "mT5-tokenized labels). val_loss: best validation loss at the leaf; initial_val_loss: the untrained "
              "model's on the root's data."]
    if any(r.test_set == LEGACY_TEST_SET for r in rows):
        lines += ["", f"Note: {LEGACY_NOTE}."]
    notes = not_computed_notes(rows)
    if notes:
        lines += ["", "## Not computed", "", *notes]
    sigs = signature_notes(rows)
    if sigs:
        lines += ["", "## Signatures", "", *sigs]
    return "\n".join(lines) + "\n"


def to_csv(rows: list[ScoreRow]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for r in rows:
        writer.writerow([r.code, r.language, r.test_set or "", r.node, _csv(r.n_test),
                         *(_csv(r.scores.get(m)) for m in METRICS), _csv(r.reference_lid), _csv(r.val_loss),
                         _csv(r.initial_val_loss), _not_computed_cell(r), _joined(r.signatures, "=")])
    return buf.getvalue()


def _csv(value) -> str:
    return "" if value is None else str(value)


def lid_baseline_values(manifest: Manifest) -> dict[str, dict[str, float]]:
    """The references' LID the workers computed ({test set: {code: value}}), for the eval.lid_baseline file."""
    out: dict[str, dict[str, float]] = {}
    for entry in manifest.nodes.values():
        for code, sets in (entry.metrics.languages if entry.metrics else {}).items():
            for test_set, s in sets.items():
                value = num_or_none(s.reference_lid)
                if value is not None and s.reference_lid_source == "computed" and test_set != LEGACY_TEST_SET:
                    out.setdefault(test_set, {}).setdefault(code, value)
    return out


def update_lid_baseline(manifest: Manifest, path: str | None) -> str | None:
    """Write the references' LID the workers computed into eval.lid_baseline `path` (the original's -ge JSON),
    so that later runs read them; only the driver writes it (at the end of the run). Returns a note, or None."""
    values = lid_baseline_values(manifest)
    if not path or not values:
        return None
    try:
        merge_lid_baseline(path, values)
    except (OSError, InputError) as err:
        log.warning("LID baseline %s not updated: %s", path, err)
        return f"LID baseline {path} not updated: {err}"
    return None


def write_results(manifest: Manifest, tree: LanguageTree, run_dir: Path) -> list[ScoreRow]:
    rows = language_rows(manifest, tree)
    markdown = to_markdown(rows, f"Results of run {manifest.data['run']}")
    note = update_lid_baseline(manifest, manifest.config.eval.lid_baseline)
    if note:
        markdown += f"\n{note}\n"
    atomic_write_text(Path(run_dir) / "results.md", markdown)
    atomic_write_text(Path(run_dir) / "results.csv", to_csv(rows))
    return rows


# ---- tables across runs (hql-ray report) -----------------------------------------------------------
def _mark_best(group: list[ScoreRow]) -> None:
    for m in BEST_METRICS:
        values = [g.scores[m] for g in group if g.scores[m] is not None]
        top = max(values) if values else None
        for g in group:
            if top is not None and g.scores[m] == top:
                g.best_metrics.append(m)
    ranked = [g for g in group if g.scores["chrf++"] is not None or g.scores["smatch"] is not None]
    winner = max(ranked, key=lambda g: tuple(-1.0 if g.scores[m] is None else g.scores[m] for m in WINNER_ORDER),
                 default=None)
    for g in group:
        g.best = g is winner


def score_rows(runs: list[RunRecord]) -> list[ScoreRow]:
    """One row per (language, test set, run): the leaf's scores, with `best` marks across runs.

    `best_metrics` lists the metrics where this run has the highest score for that language and test set
    (among runs that have one); `best` is the run with the best chrF++ (ties: spBLEU, BLEU 13a; parsing
    runs: smatch). Languages in the order of the first run that has them, test sets in `test_set_key` order.
    """
    codes: dict[str, str] = {}
    for run in runs:
        for lang in run.tree.languages:
            codes.setdefault(lang.code, lang.name)
    per_run = {run.label: language_rows(run.manifest, run.tree) for run in runs}
    for run in runs:
        for r in per_run[run.label]:
            r.run, r.node_status = run.label, run.nodes[r.node].status
    rows = []
    for code, name in codes.items():
        sets = sorted({r.test_set for rs in per_run.values() for r in rs if r.code == code}, key=test_set_key)
        for test_set in sets:
            group = [r for run in runs for r in per_run[run.label] if r.code == code and r.test_set == test_set]
            for r in group:
                r.language = name
            _mark_best(group)
            rows.extend(group)
    return rows


def means(rows: list[ScoreRow], runs: list[RunRecord], metrics: list[str]) -> dict[tuple[str, str], dict]:
    """Mean over languages per (run, test set) and metric; None when a language lacks the score, or a
    language of the run has no scores at all (its leaf failed or did not evaluate: a mean would mislead)."""
    out: dict[tuple[str, str], dict] = {}
    for run in runs:
        unscored = any(r.run == run.label and r.test_set is None for r in rows)
        for test_set in dict.fromkeys(r.test_set for r in rows if r.run == run.label):
            mine = [r for r in rows if r.run == run.label and r.test_set == test_set]
            out[(run.label, test_set)] = {}
            for m in metrics:
                values = [r.scores[m] for r in mine]
                ok = mine and not unscored and all(v is not None for v in values)
                out[(run.label, test_set)][m] = sum(values) / len(values) if ok else None
    return out


# Above this many languages (a FLORES-200-sized tree) the report opens with the means per test set and its plots
# stop naming every language.
MANY_LANGUAGES = 40


def means_markdown(rows: list[ScoreRow], runs: list[RunRecord]) -> str:
    """A short table of each run's mean scores per test set, with the languages behind each mean and the one
    scored lowest on chrF++ (what a 200-language report shows before its 800 rows)."""
    metrics = present_metrics(rows)
    avg = means(rows, runs, metrics)
    lines = ["| run | test set | languages | " + " | ".join(METRIC_NAMES[m] for m in metrics) + " | lowest chrF++ |",
             "|---|---|---|" + "---|" * (len(metrics) + 1)]
    for (label, test_set), values in avg.items():
        if test_set is None:
            continue
        mine = [r for r in rows if r.run == label and r.test_set == test_set]
        scored = [r for r in mine if r.scores.get("chrf++") is not None]
        low = min(scored, key=lambda r: r.scores["chrf++"], default=None)
        cells = ["-" if values.get(m) is None else f"{values[m]:.2f}" for m in metrics]
        lowest = "-" if low is None else f"{low.code} {low.scores['chrf++']:.2f}"
        lines.append(f"| {label} | {test_set} | {len(mine)} | " + " | ".join(cells) + f" | {lowest} |")
    return "\n".join(lines)


def scores_markdown(rows: list[ScoreRow], runs: list[RunRecord]) -> str:
    """Wide table: a row per language and test set, for each run its metrics; the best value in bold; a mean
    row per test set."""
    metrics = present_metrics(rows)
    multi = len(runs) > 1
    head = ["code", "language", "test set"]
    for run in runs:
        head += [f"{run.label} {METRIC_NAMES[m]}" if multi else METRIC_NAMES[m] for m in metrics]
    if not multi:
        head += ["node", "n_test"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    keys = list(dict.fromkeys((r.code, r.test_set) for r in rows))
    for code, test_set in keys:
        mine = {r.run: r for r in rows if r.code == code and r.test_set == test_set}
        first = next(iter(mine.values()))
        cells = [code, first.language, test_set or "-"]
        for run in runs:
            r = mine.get(run.label)
            for m in metrics:
                text = r.cell(m) if r else "-"
                if multi and r and r.scores[m] is not None and m in r.best_metrics:
                    text = f"**{text}**"
                cells.append(text)
        if not multi:
            cells += [first.node + ("" if first.node_status == "done" else f" ({first.node_status})"),
                      str(first.n_test if first.n_test is not None else "-")]
        lines.append("| " + " | ".join(cells) + " |")
    avg = means(rows, runs, metrics)
    for test_set in dict.fromkeys(t for _, t in keys):
        if test_set is None:
            continue
        cells = ["**mean**", "", test_set]
        for run in runs:
            cells += [("-" if (v := avg.get((run.label, test_set), {}).get(m)) is None else f"{v:.2f}") for m in metrics]
        if not multi:
            cells += ["", ""]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def scores_csv(rows: list[ScoreRow]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(REPORT_COLUMNS)
    for r in rows:
        writer.writerow([r.run, r.code, r.language, r.test_set or "", r.node, r.node_status,
                         *("" if r.scores[m] is None else f"{r.scores[m]:.4f}" for m in METRICS), _csv(r.n_test),
                         "" if r.val_loss is None else f"{r.val_loss:.4f}", int(r.best), ";".join(r.best_metrics),
                         _not_computed_cell(r)])
    return buf.getvalue()


# ---- root to leaf ----------------------------------------------------------------------------------------
@dataclass
class PathStep:
    """A language's scores on one test set at one node of its root-to-leaf path."""

    node: str
    name: str
    level: str
    depth: int
    status: str | None
    scores: dict[str, float | None]


@dataclass
class PathRow:
    code: str
    language: str
    test_set: str | None
    path: list[PathStep]


def path_scores(run: RunRecord) -> list[PathRow]:
    """For each language and test set, its scores at every node of its root-to-leaf path (None: not scored
    there). Inner nodes have scores only when the run evaluated every node (eval.at_nodes=all)."""
    out = []
    for lang in run.tree.languages:
        leaf = run.tree.leaf_for(lang.code)
        chain = [*run.tree.ancestors(leaf.id), leaf]
        at = {node.id: node_scores(run.nodes[node.id].metrics if node.id in run.nodes else None, lang.code)
              for node in chain}
        for test_set in sorted({s for scores in at.values() for s in scores}, key=test_set_key) or [None]:
            steps = [PathStep(node.id, node.name, node.level, node.depth,
                              run.nodes[node.id].status if node.id in run.nodes else None,
                              scored_row(lang.code, lang.name, node.id, test_set, at[node.id].get(test_set)).scores)
                     for node in chain]
            out.append(PathRow(lang.code, lang.name, test_set, steps))
    return out


def path_second_metric(paths: list[PathRow]) -> str:
    """The BLEU shown next to chrF++ on the path: spBLEU where the run has it, else BLEU (13a)."""
    return "spbleu" if any(s.scores["spbleu"] is not None for p in paths for s in p.path) else "bleu_13a"


def path_markdown(paths: list[PathRow], levels: list[str]) -> str:
    """Languages and test sets x levels; each cell `chrF++ / spBLEU (node name)` (BLEU 13a where the run has
    no spBLEU; smatch F1 for parsing runs) at that depth of the language's path."""
    depth = max((len(p.path) for p in paths), default=0)
    second = path_second_metric(paths)
    heads = [levels[i] if i < len(levels) else f"depth {i}" for i in range(depth)]
    lines = ["| code | language | test set | " + " | ".join(heads) + " |", "|" + "---|" * (3 + depth)]
    for p in paths:
        cells = []
        for i in range(depth):
            if i >= len(p.path):
                cells.append("")
                continue
            s = p.path[i].scores
            if s["smatch"] is not None and s["chrf++"] is None:  # a parsing run
                cells.append(f"{_fmt_score(s['smatch'], 1)} ({p.path[i].name})")
            else:
                cells.append(f"{_fmt_score(s['chrf++'], 1)} / {_fmt_score(s[second], 1)} ({p.path[i].name})")
        lines.append(f"| {p.code} | {p.language} | {p.test_set or '-'} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _fmt_score(value, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def path_csv(paths: list[PathRow]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["code", "language", "test_set", "depth", "level", "node", "status", *METRICS])
    for p in paths:
        for s in p.path:
            writer.writerow([p.code, p.language, p.test_set or "", s.depth, s.level, s.node, s.status,
                             *("" if s.scores[m] is None else f"{s.scores[m]:.4f}" for m in METRICS)])
    return buf.getvalue()
