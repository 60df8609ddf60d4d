"""PNG plots of runs (matplotlib, Agg backend: no display needed): scores, loss curves, node timeline.

Each function takes plain data (from `hql_ray.outputs.report`) and writes one PNG; `draw_all` makes the set
for a report. Plots never fail a report over missing data: they draw what exists and say so.
"""

from __future__ import annotations

import math
import re
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend choice)
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

from hql_ray.outputs.manifest import NodeRecord  # noqa: E402
from hql_ray.outputs.results import MANY_LANGUAGES, PathRow, ScoreRow  # noqa: E402

DPI = 110
EPS = 1e-6
# Beyond MANY_LANGUAGES a plot stops naming every language: the score bars keep a readable width and label
# every k-th language, the root-to-leaf lines lose their legend and gain a median.
MAX_WIDTH_IN = 24.0


def safe_name(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label).strip("_") or "run"


def level_colours(levels: list[str]) -> dict[str, tuple]:
    cmap = plt.get_cmap("tab10")
    return {level: cmap(i % 10) for i, level in enumerate(levels)}


def _save(fig, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return str(path)


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="grey")
    ax.set_xticks([])
    ax.set_yticks([])


def spread_labels(ax, items: list[tuple[float, float, str, object]], fontsize: float = 6.5) -> None:
    """Label line ends (x, y, text, colour) right of the data without overlaps: labels are pushed
    apart vertically (a minimum gap in axis units) and joined to their point by a thin line."""
    if not items:
        return
    log = ax.get_yscale() == "log"
    tf = (lambda v: math.log10(v)) if log else (lambda v: v)
    inv = (lambda v: 10 ** v) if log else (lambda v: v)
    lo, hi = (tf(v) for v in ax.get_ylim())
    gap = (hi - lo) * min(0.05, 0.9 / (len(items) + 1))
    ordered = sorted(items, key=lambda it: tf(it[1]))
    ys: list[float] = []
    for _, y, _, _ in ordered:
        ys.append(max(tf(y), ys[-1] + gap) if ys else tf(y))
    overflow = ys[-1] - (hi - gap / 2)
    if overflow > 0:  # pushed past the top: shift the column down, keeping the gaps
        ys = [v - overflow for v in ys]
        for i in range(1, len(ys)):
            ys[i] = max(ys[i], ys[i - 1] + gap)
    x0, x1 = ax.get_xlim()
    right = max(it[0] for it in items)
    text_x = right + (x1 - x0) * 0.06
    ax.set_xlim(x0, right + (x1 - x0) * 0.22)
    for (x, y, text, colour), ly in zip(ordered, ys):
        ax.annotate(text, (x, y), xytext=(text_x, inv(ly)), textcoords="data", fontsize=fontsize, color=colour,
                    va="center", arrowprops={"arrowstyle": "-", "color": colour, "lw": 0.5, "alpha": 0.6})
    ax.set_ylim(inv(lo), inv(hi))


def _maybe_log(ax, values: list[float]) -> None:
    """Log scale when the values span more than 5x (an untrained model's loss dwarfs the rest)."""
    positive = [v for v in values if v > 0]
    if positive and len(positive) == len(values) and max(positive) / min(positive) > 5:
        ax.set_yscale("log")
        plain = FuncFormatter(lambda v, _pos: f"{v:g}")
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(plain)


# ---- scores: grouped bars -----------------------------------------------------------------------
NAMES = {"chrf++": "chrF++", "spbleu": "spBLEU", "bleu_13a": "BLEU (13a)", "lid": "LID", "smatch": "smatch F1"}


def _score_metrics(rows: list[ScoreRow]) -> list[str]:
    """chrF++ and a BLEU (spBLEU where any run has it, else BLEU 13a), LID where there is any; smatch F1
    alone for parsing runs."""
    has = {m for m in NAMES if any(r.scores.get(m) is not None for r in rows)}
    if "smatch" in has and "chrf++" not in has:
        return ["smatch"]
    out = ["chrf++", "spbleu" if "spbleu" in has else "bleu_13a"]
    return out + (["lid"] if "lid" in has else [])


def scores_plot(rows: list[ScoreRow], run_labels: list[str], path: Path, test_set: str | None = None) -> str:
    """Per language, one bar per run (missing: no bar), a panel per metric, for one test set."""
    codes = list(dict.fromkeys(r.code for r in rows))
    metrics = _score_metrics(rows)
    by = {(r.code, r.run): r for r in rows}
    n_runs = max(len(run_labels), 1)
    width = 0.8 / n_runs
    width_in = min(MAX_WIDTH_IN, max(7.0, 0.55 * len(codes) * max(n_runs, 1.5) + 2))
    fig, axes = plt.subplots(len(metrics), 1, figsize=(width_in, 3.5 * len(metrics)), sharex=True, squeeze=False)
    axes = axes[:, 0]
    cmap = plt.get_cmap("tab10")
    for ax, metric in zip(axes, metrics):
        title = NAMES[metric]
        any_value = False
        for j, label in enumerate(run_labels):
            xs, ys = [], []
            for i, code in enumerate(codes):
                r = by.get((code, label))
                if r is not None and r.scores.get(metric) is not None:
                    xs.append(i - 0.4 + width * (j + 0.5))
                    ys.append(r.scores[metric])
            any_value |= bool(ys)
            ax.bar(xs, ys, width=width * 0.95, label=label, color=cmap(j % 10))
        ax.set_ylabel(title)
        ax.grid(axis="y", alpha=0.3)
        if not any_value:
            ax.text(0.5, 0.5, f"no {title} scores", ha="center", va="center", transform=ax.transAxes, color="grey")
    axes[0].set_title(f"Test scores per language (leaf node), test set {test_set or '-'}")
    axes[0].legend(loc="upper right", fontsize=8)
    every = max(1, math.ceil(len(codes) / (MAX_WIDTH_IN * 4)))  # at most ~4 labels per inch (tree order kept)
    few = len(codes) <= MANY_LANGUAGES
    axes[-1].set_xticks(range(0, len(codes), every))
    axes[-1].set_xticklabels(codes[::every], rotation=45 if few else 90, ha="right" if few else "center",
                             fontsize=None if few else 6)
    axes[-1].set_xlim(-0.6, len(codes) - 0.4)
    if every > 1:
        axes[-1].set_xlabel(f"{len(codes)} languages in tree order, one in {every} named (report.csv has them all)")
    return _save(fig, path)


# ---- loss curves --------------------------------------------------------------------------------
def loss_plot(nodes: dict[str, NodeRecord], levels: list[str], title: str, path: Path) -> str:
    """Train and validation loss of every node against steps counted from the root.

    A child's curve starts where its parent's ended (offset = the steps of its ancestors), so the
    plot reads as the tree: branches fork at each parent's last step. Leaves are labelled at the end.
    """
    colours = level_colours(levels or sorted({n.level or "?" for n in nodes.values()}))
    last_step = {nid: max((h.step for h in (n.history or [])), default=0) for nid, n in nodes.items()}

    def offset(nid: str) -> float:
        total, parent = 0.0, nodes[nid].parent
        while parent is not None and parent in nodes:
            total += last_step[parent]
            parent = nodes[parent].parent
        return total

    def points(nid: str, key: str) -> list[tuple[float, float]]:
        off = offset(nid)
        return [(h.step + off, getattr(h, key)) for h in nodes[nid].history or [] if getattr(h, key) is not None]

    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5), sharex=True)
    drawn = 0
    labels: dict[int, list] = {0: [], 1: []}
    values: dict[int, list[float]] = {0: [], 1: []}
    for nid, node in nodes.items():
        if not node.history:
            continue
        colour = colours.get(node.level, "black")
        for k, (ax, key) in enumerate(zip(axes, ("train_loss", "val_loss"))):
            pts = points(nid, key)
            if not pts:
                continue
            values[k] += [y for _, y in pts]
            parent = node.parent
            before = points(parent, key) if parent in nodes else []
            if before:  # a dotted link from where the parent ended: the tree reads left to right
                ax.plot([before[-1][0], pts[0][0]], [before[-1][1], pts[0][1]], ":", color=colour, linewidth=0.9)
            xs, ys = zip(*pts)
            ax.plot(xs, ys, "-o", color=colour, markersize=2.5, linewidth=1.2)
            if not node.children:
                labels[k].append((xs[-1], ys[-1], node.name or nid, colour))
        drawn += 1
    for k, ax in enumerate(axes):
        _maybe_log(ax, values[k])
        if len(labels[k]) <= 40:
            spread_labels(ax, labels[k])
    for ax, name in zip(axes, ("train loss (mean since the last validation)", "validation loss")):
        ax.set_title(name + (" (log scale)" if ax.get_yscale() == "log" else ""))
        ax.set_xlabel("optimizer steps from the root")
        ax.grid(alpha=0.3)
    if not drawn:
        for ax in axes:
            _empty(ax, "no loss history recorded")
    handles = [Patch(color=c, label=lv) for lv, c in colours.items()]
    axes[1].legend(handles=handles, fontsize=8, title="level", loc="upper right")
    fig.suptitle(title)
    return _save(fig, path)


# ---- timeline -----------------------------------------------------------------------------------
def _fits(intervals: list[tuple[float, float]], start: float, end: float) -> bool:
    return all(end <= s + EPS or start >= e - EPS for s, e in intervals)


@dataclass
class Bar:
    """A node's span on one lane of the timeline."""

    node: str
    lane: int
    start: float
    end: float
    status: str
    level: str
    name: str


def timeline_lanes(nodes: dict[str, NodeRecord], slots: int | None = None,
                   now: float | None = None) -> tuple[list[str], list[Bar]]:
    """(lane labels, bars): one lane per GPU id the manifest records, else greedy worker lanes.

    Nodes with `resources.gpu_ids` go on those GPUs' lanes; the others (CPU runs, nodes that failed
    before their GPUs were recorded) take the lowest lanes free over their time span, one lane per
    worker, opening new lanes when none is free. Running nodes end at `now`; pending ones are not drawn.
    """
    now = time.time() if now is None else now
    timed = [(nid, n) for nid, n in nodes.items() if n.started_at is not None]
    timed.sort(key=lambda item: item[1].started_at)
    gpu_ids = sorted({str(g) for _, n in timed for g in (n.resources.gpu_ids if n.resources else [])},
                     key=lambda g: (len(g), g))
    labels = [f"GPU {g}" for g in gpu_ids]
    busy: list[list[tuple[float, float]]] = [[] for _ in labels]
    if not gpu_ids:
        labels = [f"worker {i + 1}" for i in range(slots or 0)]
        busy = [[] for _ in labels]
    bars = []
    rest = []
    for nid, n in timed:
        start = float(n.started_at)
        end = float(n.finished_at) if n.finished_at is not None else now
        mine = [str(g) for g in (n.resources.gpu_ids if n.resources else [])]
        if mine:
            for g in mine:
                lane = gpu_ids.index(g)
                busy[lane].append((start, end))
                bars.append(Bar(nid, lane, start, end, n.status, n.level, n.name or nid))
        else:
            rest.append((nid, n, start, end))
    for nid, n, start, end in rest:
        want = max(1, (n.resources.workers if n.resources else 0) or 1)
        free = [i for i, ivs in enumerate(busy) if _fits(ivs, start, end)][:want]
        while len(free) < want:
            labels.append(f"{'slot' if gpu_ids else 'worker'} {len(labels) + 1}")
            busy.append([])
            free.append(len(busy) - 1)
        for lane in free:
            busy[lane].append((start, end))
            bars.append(Bar(nid, lane, start, end, n.status, n.level, n.name or nid))
    return labels, bars


def timeline_plot(nodes: dict[str, NodeRecord], levels: list[str], title: str, path: Path,
                  slots: int | None = None, now: float | None = None) -> str:
    """Gantt chart: a row per GPU/worker lane, a bar per node, coloured by level, labelled by node."""
    labels, bars = timeline_lanes(nodes, slots, now)
    colours = level_colours(levels or sorted({b.level or "?" for b in bars}))
    lane_h = 1.1 if len(labels) <= 4 else 0.6 if len(labels) <= 12 else 0.35
    fig, ax = plt.subplots(figsize=(13, max(2.5, lane_h * len(labels) + 1.5)))
    if not bars:
        _empty(ax, "no node has started")
        return _save(fig, path)
    t0 = min(b.start for b in bars)
    span = max(b.end for b in bars) - t0 or 1.0
    for b in bars:
        left, width = b.start - t0, max(b.end - b.start, span * 0.002)
        failed, running = b.status == "failed", b.status == "running"
        bar = ax.barh(b.lane, width, left=left, height=0.8, color=colours.get(b.level, "grey"),
                      edgecolor="red" if failed else "black", linewidth=1.5 if failed else 0.5,
                      hatch="//" if (failed or running) else None, alpha=0.9)[0]
        text = b.name + (" (failed)" if failed else " (running)" if running else "")
        if width > span * 0.008:
            wide = width > span * max(0.1, 0.009 * len(text))
            label = ax.text(left + width / 2, b.lane, text, ha="center", va="center", rotation=0 if wide else 90,
                            fontsize=6.5 if wide or len(labels) <= 12 else 5)
            label.set_clip_path(bar)  # never spill over a neighbour: cut at the bar's edges
    ax.set_yticks(range(len(labels)))
    ax.set_yticklabels(labels)
    ax.invert_yaxis()
    ax.set_xlabel("seconds since the first node started")
    ax.grid(axis="x", alpha=0.3)
    handles = [Patch(color=c, label=lv) for lv, c in colours.items()]
    ax.legend(handles=handles, fontsize=8, title="level", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_title(title)
    return _save(fig, path)


# ---- root to leaf -------------------------------------------------------------------------------
def path_plot(paths: list[PathRow], levels: list[str], title: str, path: Path) -> str:
    """For each language (of one test set), chrF++ and spBLEU (BLEU 13a where there is no spBLEU) at each
    depth of its root-to-leaf path (one line each)."""
    steps = [s.scores for p in paths for s in p.path]
    parsing = any(s["smatch"] is not None for s in steps) and all(s["chrf++"] is None for s in steps)
    bleu = "spbleu" if any(s["spbleu"] is not None for s in steps) else "bleu_13a"
    keys = ("smatch",) if parsing else ("chrf++", bleu)
    names = NAMES
    fig, axes = plt.subplots(1, len(keys), figsize=(6.5 * len(keys), 5.5), sharex=True, squeeze=False)
    axes = axes[0]
    cmap = plt.get_cmap("tab20")
    depth = max((len(p.path) for p in paths), default=0)
    any_value = False
    ends: dict[str, list] = {k: [] for k in keys}
    many = len(paths) > MANY_LANGUAGES
    for i, p in enumerate(paths):
        for ax, key in zip(axes, keys):
            pts = [(s.depth, s.scores[key]) for s in p.path if s.scores[key] is not None]
            if not pts:
                continue
            any_value = True
            xs, ys = zip(*pts)
            if many:  # a thin line per language, coloured by its family (the node below the root)
                family = p.path[1].node if len(p.path) > 1 else p.path[0].node
                ax.plot(xs, ys, "-", color=cmap(sum(map(ord, family)) % 20), linewidth=0.6, alpha=0.35)
            else:
                ax.plot(xs, ys, "-o", color=cmap(i % 20), markersize=3.5, linewidth=1.3, label=p.code)
            ends[key].append((xs[-1], ys[-1], p.code.split("_")[0], cmap(i % 20)))
    if many:
        for ax, key in zip(axes, keys):
            median_line(ax, paths, key, depth)
    for ax, key in zip(axes, keys):
        ax.set_title(f"{names[key]} along each language's root-to-leaf path")
        ax.set_xticks(range(depth))
        ax.set_xticklabels([levels[d] if d < len(levels) else f"depth {d}" for d in range(depth)])
        ax.set_xlim(-0.3, max(depth - 1, 0) + 0.3)
        ax.grid(alpha=0.3)
        if not any_value:
            ax.text(0.5, 0.5, "no per-node scores (eval.at_nodes=leaves?)", ha="center", va="center",
                    transform=ax.transAxes, color="grey")
    for ax, key in zip(axes, keys):
        if len(ends[key]) <= 40:
            spread_labels(ax, ends[key])
    if any_value:
        axes[-1].legend(fontsize=7, ncol=1 if many else 2, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.suptitle(title + (f" ({len(paths)} languages, coloured by family)" if many else ""))
    return _save(fig, path)


def median_line(ax, paths: list[PathRow], key: str, depth: int) -> None:
    """The median over languages of a score at each depth of their paths, drawn bold (a big tree's plot)."""
    xs, ys = [], []
    for d in range(depth):
        values = [s.scores[key] for p in paths for s in p.path if s.depth == d and s.scores[key] is not None]
        if values:
            xs.append(d)
            ys.append(statistics.median_high(values))
    if xs:
        ax.plot(xs, ys, "-o", color="black", linewidth=2.2, markersize=5, label="median")


# ---- all of them --------------------------------------------------------------------------------
def draw_all(runs, rows: list[ScoreRow], plot_dir: Path, paths: list[PathRow] | None = None) -> dict[str, str]:
    """Every plot of a report: {title: path}. Per-run plots get the run's label in their file name.
    `paths` is the one run's root-to-leaf scores (results.path_scores), when there is one run."""
    plot_dir = Path(plot_dir)
    out = {}
    for test_set in dict.fromkeys(r.test_set for r in rows):
        mine = [r for r in rows if r.test_set == test_set]
        out[f"Scores per language ({test_set or 'no test set'})"] = scores_plot(
            mine, [r.label for r in runs], plot_dir / f"scores_{safe_name(test_set or 'none')}.png", test_set)
    single = len(runs) == 1
    for run in runs:
        suffix = "" if single else f"_{safe_name(run.label)}"
        levels = list(run.tree.levels)
        slots = (run.manifest.data.get("slots") or {}).get("total")
        now = run.manifest.data.get("finished_at") or run.manifest.data.get("updated_at")
        nodes = run.nodes
        out[f"Loss curves ({run.label})"] = loss_plot(nodes, levels, f"Loss per node: {run.label}",
                                                      plot_dir / f"loss_curves{suffix}.png")
        out[f"Timeline ({run.label})"] = timeline_plot(nodes, levels, f"Nodes on their slots: {run.label}",
                                                       plot_dir / f"timeline{suffix}.png", slots=slots, now=now)
    if single and paths and len(runs[0].tree.levels) > 1:
        run = runs[0]
        for test_set in dict.fromkeys(p.test_set for p in paths):
            name = test_set or "none"
            out[f"Root to leaf ({name})"] = path_plot(
                [p for p in paths if p.test_set == test_set], list(run.tree.levels),
                f"Scores from root to leaf: {run.label}, test set {name}", plot_dir / f"root_to_leaf_{safe_name(name)}.png")
    return out
