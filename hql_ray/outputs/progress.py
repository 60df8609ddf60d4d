"""Progress of a run in the terminal: a live tree view on a TTY, plain lines in logs and CI.

Both reporters take the driver's events (`event(event)`, one record per kind) and poll the run's board actor in a
background thread for each running node's step, epoch and losses. Nothing here may stop a run: every
event, poll and redraw is guarded, a slow board is waited on with a timeout off the training thread,
and a broken display falls back to plain lines.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from hql_ray.outputs.manifest import STATUSES
from hql_ray.settings.records import (Event, ExportDone, ExportStarted, NodeDone, NodeFailed, NodeResized, NodeSkipped,
                                      NodeStarted, NodeWaiting, Progress, RunFinished, RunStarted, Task)


@dataclass
class NodeView:
    id: str
    name: str
    depth: int = 0
    parent: str | None = None
    children: list[str] = field(default_factory=list)
    status: str = "pending"
    started: float | None = None
    finished: float | None = None
    workers: int | None = None
    step: int | None = None
    total_steps: int | None = None
    epoch: float | None = None
    loss: float | None = None
    val_loss: float | None = None
    phase: str | None = None
    task: Task | None = None  # the long step it is in besides training
    exporting: bool = False  # the driver writes its final/<code>/: the workers' progress is over
    error: str | None = None
    resumed_from: int | None = None  # the step its checkpoint let it continue from
    waiting: str | None = None  # why its run waits for resources (cleared by the next progress)
    waiting_at: float = 0.0

    def elapsed(self, now: float) -> float | None:
        if self.started is None:
            return None
        return (self.finished or now) - self.started


class RunView:
    """What the reporters show: the tree's nodes with their state, fed by events and board snapshots."""

    def __init__(self, cfg=None, tree=None):
        self.lock = threading.RLock()
        self.nodes: dict[str, NodeView] = {}
        self.t0 = time.time()
        self.finished: float | None = None
        self.run_dir = ""
        self.slots: int | None = None
        self.gpu = False
        self.total = 0
        self.poll_errors = 0
        self.last_poll_error: str | None = None
        # A finished node has trained exactly this many epochs (unless train.max_steps cut it short).
        train = getattr(cfg, "train", None)
        self.epochs = getattr(train, "epochs", None) if getattr(train, "max_steps", None) is None else None
        self._add_tree(tree)

    def _add_tree(self, tree) -> None:
        """The driver's tree, every node shown from the start (pending ones too); without it, nodes
        appear as events name them."""
        if tree is None:
            return
        for node in tree.nodes.values():
            self.nodes[node.id] = NodeView(node.id, node.name, node.depth, node.parent, list(node.children))
        self.total = len(self.nodes)

    def node(self, node_id: str) -> NodeView:
        if node_id not in self.nodes:
            self.nodes[node_id] = NodeView(node_id, node_id.split(".", 1)[-1])
        return self.nodes[node_id]

    def apply_event(self, event: Event) -> None:
        now = time.time()
        with self.lock:
            if isinstance(event, RunStarted):
                self.run_dir, self.slots, self.gpu = event.run_dir, event.slots, event.gpu
                self.total = event.nodes or len(self.nodes)
            elif isinstance(event, NodeSkipped):
                self.node(event.node).status = "skipped"
            elif isinstance(event, NodeStarted):
                n = self.node(event.node)
                n.status, n.started, n.finished, n.error, n.workers = "running", now, None, None, event.workers
                n.step = n.epoch = n.loss = n.val_loss = n.phase = n.task = n.resumed_from = None
                n.exporting = False
            elif isinstance(event, NodeResized):
                self.node(event.node).workers = event.workers
            elif isinstance(event, NodeDone):
                self._done(self.node(event.node), event.metrics, now)
            elif isinstance(event, ExportStarted):
                n = self.node(event.node)
                n.exporting, n.phase = True, "export"
                n.task = Task("export", event.code, event.index, event.count)
            elif isinstance(event, NodeWaiting):
                n = self.node(event.node)
                n.waiting, n.waiting_at = event.message, now
            elif isinstance(event, NodeFailed):
                n = self.node(event.node)
                n.status, n.finished, n.error, n.waiting = "failed", now, event.error, None
            elif isinstance(event, RunFinished):
                self.finished = now
                for node_id in event.not_done:
                    if self.node(node_id).status == "pending":
                        self.node(node_id).phase = "not run"  # below a failed node, or the run was stopped

    def _done(self, n: "NodeView", m, now: float) -> None:
        n.status, n.finished = "done", now
        if m.val_loss is not None:
            n.val_loss = m.val_loss
        if m.train_loss is not None:
            n.loss = m.train_loss
        if m.steps is not None:
            n.step = n.total_steps = m.steps
        n.epoch = self.epochs
        n.phase = n.waiting = n.task = None
        n.exporting = False

    def apply_snapshot(self, snapshot: dict[str, Progress]) -> None:
        """Board progress of running nodes (finished ones keep their final numbers)."""
        with self.lock:
            for node_id, p in (snapshot or {}).items():
                n = self.node(node_id)
                if n.status != "running" or n.exporting or not isinstance(p, Progress):
                    continue
                if n.waiting and (p.time or 0) > n.waiting_at:
                    n.waiting = None  # it trains again
                for key in ("step", "total_steps", "epoch", "loss", "val_loss", "phase", "resumed_from"):
                    if getattr(p, key) is not None:
                        setattr(n, key, getattr(p, key))
                n.task = p.current_task  # the board keeps a node's last task: current only in its own phase

    def counts(self) -> dict[str, int]:
        with self.lock:
            out = {s: 0 for s in STATUSES}
            for n in self.nodes.values():
                out[n.status] = out.get(n.status, 0) + 1
            return out

    def by_level(self) -> list[tuple[str, list[NodeView]]]:
        """(level, its nodes) from the root's level down: a big tree's view is one line per level."""
        with self.lock:
            levels: dict[str, list[NodeView]] = {}
            for n in sorted(self.nodes.values(), key=lambda n: n.depth):
                levels.setdefault(n.id.split(".", 1)[0], []).append(n)
            return list(levels.items())

    def ordered(self) -> list[tuple[str, NodeView]]:
        """(tree prefix, node) in tree order, with box-drawing prefixes like `hql-ray tree`."""
        with self.lock:
            roots = [n for n in self.nodes.values() if n.parent is None or n.parent not in self.nodes]
            out: list[tuple[str, NodeView]] = []

            def walk(n: NodeView, prefix: str, last: bool, top: bool) -> None:
                out.append((prefix + ("" if top else ("└── " if last else "├── ")), n))
                inner = prefix if top else prefix + ("    " if last else "│   ")
                kids = [self.nodes[c] for c in n.children if c in self.nodes]
                for i, child in enumerate(kids):
                    walk(child, inner, i == len(kids) - 1, False)

            for root in roots:
                walk(root, "", True, True)
            return out


# ---- formatting helpers -------------------------------------------------------------------------
def fmt_time(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = int(max(seconds, 0))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def fmt_num(value, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) else ""


def fmt_step(n: NodeView) -> str:
    if n.step is None:
        return ""
    return f"{n.step}/{n.total_steps}" if n.total_steps else str(n.step)


def state_text(n: NodeView) -> str:
    if n.status == "running" and n.waiting:
        return "waiting"
    if n.status == "running" and n.phase == "evaluate":
        return "evaluating"
    if n.status == "running" and n.phase == "prepare":
        return "preparing"
    if n.status == "running" and n.phase == "export":
        return "exporting"
    if n.status == "pending" and n.phase == "not run":
        return "not run"
    if n.status == "skipped":
        return "skipped (resume)"
    return n.status


# ---- board polling ------------------------------------------------------------------------------
class BoardPoller:
    """Polls `board.snapshot` off the training thread; a slow or dead board only counts an error."""

    def __init__(self, view: RunView, interval: float = 0.5, timeout: float = 2.0, on_poll=None):
        self.view = view
        self.interval = interval
        self.timeout = timeout
        self.on_poll = on_poll
        self.board = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, board) -> None:
        if board is None:
            return
        self.board = board
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._loop, name="hql-progress-poll", daemon=True)
        self._thread.start()

    def fetch(self) -> dict:
        ref = self.board.snapshot.remote()
        ray = sys.modules.get("ray")
        if ray is not None and isinstance(ref, ray.ObjectRef):
            return ray.get(ref, timeout=self.timeout)
        return ref  # a plain object standing in for the actor (tests)

    def poll_once(self) -> None:
        try:
            self.view.apply_snapshot(self.fetch())
            if self.on_poll is not None:
                self.on_poll()
        except Exception as err:  # noqa: BLE001 - progress is best effort
            with self.view.lock:
                self.view.poll_errors += 1
                self.view.last_poll_error = f"{type(err).__name__}: {err}"[:200]

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.poll_once()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.timeout + 1.0)  # daemon: a hung ray.get cannot hold the exit


class _Guarded:
    """Shared shell: events and the context never raise into the driver."""

    def __init__(self, cfg, poll_interval: float = 0.5, poll_timeout: float = 2.0, tree=None):
        self.cfg = cfg
        self.view = RunView(cfg, tree)
        self.poller = BoardPoller(self.view, poll_interval, poll_timeout, on_poll=self._after_poll)
        self.errors = 0

    def _after_poll(self) -> None:
        pass

    def event(self, event: Event) -> None:
        try:
            self.view.apply_event(event)
            if isinstance(event, RunStarted):
                self.poller.start(event.board)
            self._show(event)
        except Exception as err:  # noqa: BLE001 - a display bug must not kill a run
            self._reporter_error(err)

    def _reporter_error(self, err: BaseException) -> None:
        self.errors += 1
        if self.errors == 1:
            try:
                print(f"hql-ray: progress display error (ignored): {type(err).__name__}: {err}", file=sys.stderr)
            except Exception:  # noqa: BLE001
                pass

    def _show(self, event: Event) -> None:
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        try:
            self.poller.stop()
        except Exception as err:  # noqa: BLE001
            self._reporter_error(err)
        return False


class PlainReporter(_Guarded):
    """One line per event with the elapsed time, plus every `progress_every` s a line per running node.

    Works in logs and CI (no terminal control codes).
    """

    # Polls the board every 5 s: it prints progress every 30 s (each poll costs the driver ~1-2 ms of CPU).
    def __init__(self, cfg, stream=None, progress_every: float | None = 30.0, poll_interval: float = 5.0,
                 poll_timeout: float = 2.0, tree=None, task_every: float | None = 10.0):
        super().__init__(cfg, poll_interval, poll_timeout, tree)
        self.stream = stream or sys.stdout
        self.t0 = time.time()
        self.done = 0
        self.total = 0
        self.progress_every = progress_every
        self.task_every = task_every  # a line per changed long step (tokenizing, generating) this often
        self._last_progress = time.time()
        self._last_task = 0.0
        self._last_steps: dict[str, object] = {}
        self._last_tasks: dict[str, str] = {}
        self._resumes: dict[str, int] = {}

    def _print(self, text: str) -> None:
        elapsed = time.time() - self.t0
        print(f"[{elapsed:7.1f}s] {text}", file=self.stream, flush=True)

    def _after_poll(self) -> None:
        now = time.time()
        for line in self.resume_lines():
            self._print(line)
        if self.task_every and now - self._last_task >= self.task_every:
            lines = self.task_lines()
            if lines:
                self._last_task = now
            for line in lines:
                self._print(line)
        if not self.progress_every or now - self._last_progress < self.progress_every:
            return
        self._last_progress = now
        for line in self.progress_lines():
            self._print(line)

    def resume_lines(self) -> list[str]:
        """`node: resumed at step 8,500 of 46,500`, once per resume (its checkpoint: an earlier attempt or launch)."""
        lines = []
        with self.view.lock:
            for n in self.view.nodes.values():
                if n.status == "running" and n.resumed_from is not None and self._resumes.get(n.id) != n.resumed_from:
                    self._resumes[n.id] = n.resumed_from
                    of = f" of {n.total_steps:,}" if n.total_steps else ""
                    lines.append(f"{n.id}: resumed at step {n.resumed_from:,}{of} from its checkpoint")
        return lines

    def task_lines(self, only_changed: bool = True) -> list[str]:
        """`node: tokenizing deu_Latn train (3/12)` / `node: generating flores deu_Latn 64/1012 (language 1/4)`
        for running nodes in a long step other than training, whose text moved since the last line."""
        lines = []
        with self.view.lock:
            for n in self.view.nodes.values():
                text = n.task.text() if n.status == "running" and n.task else ""
                if not text or (only_changed and self._last_tasks.get(n.id) == text):
                    continue
                self._last_tasks[n.id] = text
                lines.append(f"  {n.id}: {text}")
        return lines

    def progress_lines(self, only_changed: bool = True) -> list[str]:
        """`node: step a/b, epoch e, loss x, val y` for running nodes whose numbers moved."""
        lines = []
        with self.view.lock:
            for n in self.view.nodes.values():
                if n.status != "running" or n.step is None:
                    continue
                key = (n.step, n.phase, n.val_loss)
                if only_changed and self._last_steps.get(n.id) == key:
                    continue
                self._last_steps[n.id] = key
                parts = [f"step {fmt_step(n)}"]
                if n.epoch is not None:
                    parts.append(f"epoch {n.epoch:.2f}")
                if n.loss is not None:
                    parts.append(f"loss {n.loss:.3f}")
                if n.val_loss is not None:
                    parts.append(f"val {n.val_loss:.3f}")
                if n.phase == "evaluate":
                    parts.append("evaluating")
                lines.append(f"  {n.id}: {', '.join(parts)}")
        return lines

    def _show(self, event: Event) -> None:
        line = self._line(event)
        if line:
            self._print(line)

    def _line(self, event: Event) -> str | None:
        if isinstance(event, RunStarted):
            self.total = event.nodes
            return f"run {event.run_dir}: {event.nodes} nodes on {event.slots} {'GPU' if event.gpu else 'CPU'} slot(s)"
        if isinstance(event, NodeSkipped):
            self.done += 1
            return f"{event.node}: already done (resume), skipped"
        if isinstance(event, NodeStarted):
            warm = ", a warm worker" if event.executor == "warm" else ""
            return f"{event.node}: started on {event.workers} worker(s){warm}"
        if isinstance(event, NodeResized):
            return (f"{event.node}: goes on from its checkpoint (step {event.paused_at}) on {event.workers} "
                    f"worker(s), {event.workers_before} before")
        if isinstance(event, NodeDone):
            self.done += 1
            m, parts = event.metrics, []
            if m.val_loss is not None and m.initial_val_loss is not None:
                parts.append(f"val_loss {m.initial_val_loss:.3f} -> {m.val_loss:.3f}")
            elif m.val_loss is not None:
                parts.append(f"val_loss {m.val_loss:.3f}")
            return f"{event.node}: done ({self.done}/{self.total}) {'; '.join(parts + m.chrf_means())}"
        if isinstance(event, ExportStarted):
            return f"{event.node}: {Task('export', event.code, event.index, event.count).text()}"
        if isinstance(event, ExportDone):
            took = f" in {event.seconds:.1f} s" if event.seconds is not None else ""
            return f"{event.node}: exported {event.code} ({event.index}/{event.count}){took}"
        if isinstance(event, NodeWaiting):
            return f"{event.node}: WAITING for resources: {event.message}"
        if isinstance(event, NodeFailed):
            return f"{event.node}: FAILED: {event.error}"
        if isinstance(event, RunFinished):
            return "run " + ("finished" if not event.not_done else f"stopped with {len(event.not_done)} node(s) not done")
        return None


STYLES = {"waiting": "bold yellow", "pending": "dim", "not run": "dim red", "running": "yellow", "evaluating": "cyan",
          "preparing": "yellow", "exporting": "cyan", "done": "green", "failed": "bold red", "skipped (resume)": "blue"}
ICONS = {"pending": "·", "running": "▶", "done": "✔", "failed": "✖", "skipped": "↷"}


class LiveReporter(_Guarded):
    """A rich Live table of the tree, redrawn ~2x a second; failures and the end are also printed."""

    def __init__(self, cfg, console=None, refresh_per_second: float = 2.0, poll_interval: float = 1.0,
                 poll_timeout: float = 2.0, tree=None):
        from rich.console import Console

        super().__init__(cfg, poll_interval, poll_timeout, tree)
        self.console = console or Console()
        self.refresh_per_second = refresh_per_second
        self.live = None

    def render(self):
        """The current view as a rich renderable (a header line and the node table)."""
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        try:
            now = time.time()
            view = self.view
            with view.lock:
                c = self.view.counts()
                end = view.finished or now
                slot_kind = "GPU" if view.gpu else "CPU"
                head = Text.assemble(
                    ("hql-ray ", "bold"), (view.run_dir or "(starting)", "bold cyan"),
                    f"  {view.slots if view.slots is not None else '?'} {slot_kind} slot(s)  ",
                    (f"{c['done'] + c['skipped']}/{view.total or len(view.nodes)} done", "green"), "  ",
                    (f"{c['running']} running", "yellow"), "  ",
                    (f"{c['failed']} failed", "bold red" if c["failed"] else "dim"),
                    f"  elapsed {fmt_time(end - view.t0)}",
                )
                table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
                for name, justify in (("node", "left"), ("state", "left"), ("step", "right"), ("epoch", "right"),
                                      ("loss", "right"), ("val loss", "right"), ("time", "right"),
                                      ("workers", "right")):
                    table.add_column(name, justify=justify, no_wrap=True)
                rows = view.ordered()
                if len(rows) > self.max_rows():  # a big tree: a line per level, then its running and failed nodes
                    rows = level_rows(view)
                for prefix, n in rows:
                    if isinstance(n, str):  # a level's summary
                        table.add_row(Text(prefix, style="bold"), Text(n, style="dim"), *[""] * 6)
                        continue
                    state = state_text(n)
                    style = STYLES.get(state, "")
                    table.add_row(
                        Text.assemble((prefix, "dim"), (n.name, "bold" if n.status == "running" else "")),
                        Text(f"{ICONS.get(n.status, ' ')} {state}", style=style),
                        fmt_step(n), fmt_num(n.epoch, 2), fmt_num(n.loss), fmt_num(n.val_loss),
                        fmt_time(n.elapsed(end)),
                        str(n.workers) if n.workers else "",
                    )
                parts = [head, table]
                for n in view.nodes.values():
                    if n.status == "failed" and n.error:
                        parts.append(Text(f"✖ {n.id}: {n.error}", style="red"))
                    elif n.status == "running" and n.waiting:
                        parts.append(Text(f"⏳ {n.waiting}", style="yellow"))
                    elif n.status == "running" and n.task is not None:
                        parts.append(Text(f"▸ {n.id}: {n.task.text()}", style="cyan"))
                if view.poll_errors and view.last_poll_error and view.finished is None:
                    parts.append(Text(f"(live numbers delayed: board poll failed {view.poll_errors}x: "
                                      f"{view.last_poll_error})", style="dim"))
            return Group(*parts)
        except Exception as err:  # noqa: BLE001 - never let a redraw raise in rich's thread
            return Text(f"(progress view unavailable: {type(err).__name__}: {err})")

    def max_rows(self) -> int:
        """Node rows that fit the terminal (with the header and a few notes); more: one line per level."""
        return max(MIN_ROWS, self.console.height - 8)

    def __enter__(self):
        try:
            from rich.live import Live

            self.live = Live(get_renderable=self.render, console=self.console,
                             refresh_per_second=self.refresh_per_second, transient=False)
            self.live.start()
        except Exception as err:  # noqa: BLE001 - no live view: events still print
            self.live = None
            self._reporter_error(err)
        return self

    def __exit__(self, *exc):
        super().__exit__(*exc)
        try:
            if self.live is not None:
                self.live.refresh()
                self.live.stop()
        except Exception as err:  # noqa: BLE001
            self._reporter_error(err)
        return False

    def _show(self, event: Event) -> None:
        if isinstance(event, NodeFailed):
            self.console.print(f"[bold red]✖ {event.node} failed:[/] {event.error}", highlight=False)
        elif isinstance(event, RunFinished):
            if event.not_done:
                self.console.print(f"[red]run stopped with {len(event.not_done)} node(s) not done[/]", highlight=False)
            else:
                self.console.print(f"[green]run finished in {fmt_time(time.time() - self.view.t0)}[/]", highlight=False)
        if self.live is not None:
            self.live.refresh()


MIN_ROWS = 20  # a tree up to this many nodes is always drawn whole


def level_rows(view: RunView) -> list[tuple[str, "NodeView | str"]]:
    """A big tree's rows: per level a summary ("12/40 done · 3 running"), then its running and failed nodes
    (pending and finished ones are in the counts)."""
    rows: list[tuple[str, NodeView | str]] = []
    for level, nodes in view.by_level():
        counts = Counter(n.status for n in nodes)
        finished = counts.get("done", 0) + counts.get("skipped", 0)
        summary = " · ".join([f"{finished}/{len(nodes)} done", *(f"{counts[s]} {s}" for s in
                                                                 ("running", "failed", "pending") if counts.get(s))])
        rows.append((f"{level} ({len(nodes)} node{'s' if len(nodes) > 1 else ''})", summary))
        rows += [("  ", n) for n in nodes if n.status in ("running", "failed")]
    return rows


def make_reporter(cfg, plain: bool = False, tree=None):
    """Live tree view on a terminal; plain lines with --plain, when stdout is not a TTY, or TERM=dumb.
    `tree` is the driver's (its nodes are shown from the start)."""
    try:
        tty = sys.stdout.isatty()
    except Exception:  # noqa: BLE001 - odd stdout replacements
        tty = False
    if plain or not tty or os.environ.get("TERM") == "dumb":
        return PlainReporter(cfg, tree=tree)
    try:
        return LiveReporter(cfg, tree=tree)
    except Exception:  # noqa: BLE001 - rich missing or broken: plain lines still work
        return PlainReporter(cfg, tree=tree)
