"""The score tables, one home for both readers: the driver's results.md|csv (one run, written at its end)
and `hql-ray report`'s tables across runs and along root-to-leaf paths. Every score of a language is
its leaf node's (`language_rows`)."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from hql_ray.manifest import Manifest, RunRecord, atomic_write_text
from hql_ray.tree import LanguageTree

COLUMNS = ["code", "language", "node", "val_loss", "initial_val_loss", "bleu", "chrf++", "spbleu", "n_test"]
METRICS = ("bleu", "chrf++", "spbleu", "smatch")  # smatch = F1, for text2amr (parsing) runs
METRIC_NAMES = {"bleu": "BLEU", "chrf++": "chrF++", "spbleu": "spBLEU", "smatch": "smatch F1"}
CSV_COLUMNS = ["run", "code", "language", "node", "node_status", "bleu", "chrf++", "spbleu", "smatch", "n_test",
               "val_loss", "best", "best_metrics"]


def language_rows(manifest: Manifest, tree: LanguageTree) -> list[dict]:
    """One row per language: the metrics of the node that finished it (its leaf)."""
    rows = []
    for lang in tree.languages:
        leaf = tree.leaf_for(lang.code)
        entry = manifest.nodes[leaf.id]
        metrics = entry.metrics or {}
        scores = (metrics.get("languages") or {}).get(lang.code, {})
        ancestors = tree.ancestors(leaf.id)
        root_id = ancestors[0].id if ancestors else leaf.id
        root_metrics = manifest.nodes[root_id].metrics or {}
        rows.append(
            {
                "code": lang.code,
                "language": lang.name,
                "node": leaf.id,
                "val_loss": metrics.get("val_loss"),
                "initial_val_loss": root_metrics.get("initial_val_loss"),
                "bleu": scores.get("bleu"),
                "chrf++": scores.get("chrf++"),
                "spbleu": scores.get("spbleu"),
                "n_test": scores.get("n"),
            }
        )
    return rows


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def to_markdown(rows: list[dict], title: str) -> str:
    lines = [f"# {title}", "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_fmt(r[c]) for c in COLUMNS) + " |" for r in rows]
    lines += ["", "val_loss: best validation loss at the language's last node; initial_val_loss: the untrained",
              "model's validation loss on the root's data. BLEU/chrF++/spBLEU on the language's test split.", ""]
    return "\n".join(lines)


def to_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def write_results(manifest: Manifest, tree: LanguageTree, run_dir: Path) -> list[dict]:
    rows = language_rows(manifest, tree)
    atomic_write_text(Path(run_dir) / "results.md", to_markdown(rows, f"Results of run {manifest.data['run']}"))
    atomic_write_text(Path(run_dir) / "results.csv", to_csv(rows))
    return rows


# ---- tables across runs (hql-ray report) -----------------------------------------------------------
def num_or_none(value) -> float | None:
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
            leaf_scores = ((run.nodes[r["node"]].metrics or {}).get("languages") or {}).get(code) or {}
            r = {**r, "smatch": leaf_scores.get("f1")}
            group.append({
                "run": run.label, "code": code, "language": names[code], "node": r["node"],
                "node_status": run.nodes[r["node"]].status,
                **{m: num_or_none(r[m]) for m in METRICS},
                "n_test": r["n_test"], "val_loss": num_or_none(r["val_loss"]),
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


def _fmt_score(value, digits: int = 2) -> str:
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
                text = _fmt_score(r[m]) if r else "-"
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
        cells += [_fmt_score(avg[run.label][m]) for m in metrics]
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
            entry = run.nodes.get(node.id)
            scores = (((entry and entry.metrics) or {}).get("languages") or {}).get(lang.code) or {}
            steps.append({"node": node.id, "name": node.name, "level": node.level, "depth": node.depth,
                          "status": entry and entry.status, "chrf++": num_or_none(scores.get("chrf++")),
                          "bleu": num_or_none(scores.get("bleu")), "smatch": num_or_none(scores.get("f1"))})
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
                cells.append(f"{_fmt_score(s['smatch'], 1)} ({s['name']})")
            else:
                cells.append(f"{_fmt_score(s['chrf++'], 1)} / {_fmt_score(s['bleu'], 1)} ({s['name']})")
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
