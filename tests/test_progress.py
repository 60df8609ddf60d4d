"""Progress reporters on a synthetic event sequence: plain lines, the rich live view, a broken board."""

from __future__ import annotations

import io
import re
import time

from rich.console import Console

from hql_ray.settings.config import make_config
from hql_ray.outputs.progress import LiveReporter, PlainReporter, make_reporter
from hql_ray.settings.records import (NodeDone, NodeFailed, NodeMetrics, NodeStarted, NodeWaiting, Progress, RunFinished,
                                      RunStarted,
                                      TestSetScores)
from hql_ray.settings.tree import load_tree

TREE = """code,level0,level1,language
deu_Latn,Indo_European,Germanic,German
nld_Latn,Indo_European,Germanic,Dutch
ita_Latn,Indo_European,Romance,Italian
"""


class _Method:
    def __init__(self, fn):
        self.fn = fn

    def remote(self, *args):
        return self.fn(*args)


class FakeBoard:
    """Stands in for the RunBoard actor: `snapshot.remote()` returns the dict (or raises)."""

    def __init__(self, snapshot=None, error: Exception | None = None):
        self.calls = 0
        self.data = snapshot or {}
        self.error = error
        self.snapshot = _Method(self._snapshot)

    def _snapshot(self):
        self.calls += 1
        if self.error is not None:
            raise self.error
        return dict(self.data)


def config(tmp_path):
    tree = tmp_path / "tree.csv"
    tree.write_text(TREE)
    return make_config(None, {}, [f"tree.file={tree}", "tree.levels=[level0, level1, language]"])


def tree_of(cfg):
    return load_tree(cfg.tree.file, cfg.tree.levels)


SNAPSHOT = {"level1.Germanic": Progress(node="level1.Germanic", step=12, total_steps=40, epoch=0.3,
                                        loss=2.3456, val_loss=3.1234, phase="train", time=0.0),
            "level1.Romance": Progress(node="level1.Romance", step=30, total_steps=30, phase="evaluate", loss=1.5)}


def feed(reporter, board, finish=True):
    reporter.event(RunStarted(run_dir="/runs/demo", slots=2, gpu=False, nodes=6, board=board))
    reporter.event(NodeStarted(node="level0.Indo_European", workers=2))
    metrics = NodeMetrics(initial_val_loss=6.5, val_loss=3.5, train_loss=4.25, steps=20,
                          languages={"deu_Latn": {"flores": TestSetScores(chrf=10.0)},
                                     "ita_Latn": {"flores": TestSetScores(chrf=20.0)}})
    reporter.event(NodeDone(node="level0.Indo_European", metrics=metrics))
    reporter.event(NodeStarted(node="level1.Germanic", workers=1))
    reporter.event(NodeStarted(node="level1.Romance", workers=1))
    deadline = time.time() + 5
    seen = board.calls if board is not None else 0  # polls before the nodes started do not count
    while board is not None and board.calls < seen + 2 and time.time() < deadline:
        time.sleep(0.02)  # let the poller see the board with both nodes running
    reporter.event(NodeFailed(node="language.German", error="RuntimeError: out of memory"))
    if finish:
        reporter.event(RunFinished(failed=["language.German"], not_done=["language.German", "language.Dutch"]))


def plain_text(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)


def test_plain_reporter_lines_and_progress(tmp_path):
    out = io.StringIO()
    board = FakeBoard(SNAPSHOT)
    reporter = PlainReporter(config(tmp_path), tree=tree_of(config(tmp_path)), stream=out, progress_every=None, poll_interval=0.01)
    with reporter:
        feed(reporter, board)
        lines = reporter.progress_lines()
    text = out.getvalue()
    assert "run /runs/demo: 6 nodes on 2 CPU slot(s)" in text
    assert "level0.Indo_European: started on 2 worker(s)" in text
    assert "level0.Indo_European: done (1/6) val_loss 6.500 -> 3.500; chrF++ flores 15.0 (mean of 2)" in text
    assert "language.German: FAILED: RuntimeError: out of memory" in text
    assert "run stopped with 2 node(s) not done" in text
    assert "  level1.Germanic: step 12/40, epoch 0.30, loss 2.346, val 3.123" in lines
    assert "  level1.Romance: step 30/30, loss 1.500, evaluating" in lines
    assert reporter.progress_lines() == []  # nothing moved since: no repeated lines in the log


def test_plain_reporter_prints_periodic_progress(tmp_path):
    out = io.StringIO()
    reporter = PlainReporter(config(tmp_path), tree=tree_of(config(tmp_path)), stream=out, progress_every=0.01, poll_interval=0.01)
    with reporter:
        feed(reporter, FakeBoard(SNAPSHOT), finish=False)
        time.sleep(0.1)
    assert "level1.Germanic: step 12/40, epoch 0.30, loss 2.346, val 3.123" in out.getvalue()


def test_live_reporter_renders_tree_states_and_losses(tmp_path):
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=140)
    board = FakeBoard(SNAPSHOT)
    reporter = LiveReporter(config(tmp_path), tree=tree_of(config(tmp_path)), console=console, poll_interval=0.01, refresh_per_second=20)
    with reporter:
        feed(reporter, board)
        time.sleep(0.1)
    live_out = plain_text(buf.getvalue())
    assert "✖ language.German failed: RuntimeError: out of memory" in live_out
    assert "run stopped with 2 node(s) not done" in live_out

    frame = io.StringIO()
    Console(file=frame, force_terminal=True, width=140).print(reporter.render())
    text = plain_text(frame.getvalue())
    lines = text.splitlines()

    def row(name):
        return next(line for line in lines if re.search(rf"(^|[ ─])({name})\s", line))

    assert "/runs/demo" in lines[0] and "1/6 done" in lines[0] and "2 running" in lines[0] and "1 failed" in lines[0]
    assert "✔ done" in row("Indo_European") and "20/20" in row("Indo_European") and "3.500" in row("Indo_European")
    assert "1.00" in row("Indo_European")  # a finished node shows the epochs it trained
    germanic = row("Germanic")
    assert germanic.startswith("├── Germanic")
    assert "▶ running" in germanic and "12/40" in germanic and "0.30" in germanic
    assert "2.346" in germanic and "3.123" in germanic
    assert "evaluating" in row("Romance")
    assert "✖ failed" in row("German")
    assert "not run" in row("Dutch")  # under a failed/stopped part of the tree
    assert "· pending" in row("Italian")
    assert "│   ├── German" in text and "└── Romance" in text


def test_broken_board_and_bad_events_never_raise(tmp_path, capsys):
    buf = io.StringIO()
    board = FakeBoard(error=TimeoutError("board is slow"))
    reporter = LiveReporter(config(tmp_path), tree=tree_of(config(tmp_path)), console=Console(file=buf, force_terminal=True, width=120),
                            poll_interval=0.01, poll_timeout=0.05)
    with reporter:
        feed(reporter, board, finish=False)
        reporter.event(NodeDone(node=None))  # malformed: no node
        reporter.event(RunStarted(run_dir="/x", slots=None, gpu=None, nodes=None))  # missing values
        reporter.event("mystery")  # not an event record
        time.sleep(0.05)
        text = plain_text(str(reporter.render()))
    assert board.calls >= 2 and reporter.view.poll_errors >= 2
    assert "board is slow" in (reporter.view.last_poll_error or "")
    assert reporter.errors >= 1
    shown = capsys.readouterr().err + plain_text(buf.getvalue())  # the live view redirects stderr above itself
    assert shown.count("progress display error (ignored)") == 1  # said once, not at every event
    frame = io.StringIO()
    Console(file=frame, force_terminal=True, width=160).print(reporter.render())
    assert "board poll failed" in plain_text(frame.getvalue())
    assert text  # render still works

    plain = PlainReporter(config(tmp_path), tree=tree_of(config(tmp_path)), stream=io.StringIO(), progress_every=0.01, poll_interval=0.01)
    with plain:
        feed(plain, FakeBoard(error=RuntimeError("actor died")))
        plain.event(NodeStarted(node=None, workers=None))
    assert plain.view.poll_errors >= 1


def test_make_reporter_picks_plain_off_a_terminal(tmp_path):
    cfg = config(tmp_path)
    assert isinstance(make_reporter(cfg, plain=True), PlainReporter)
    assert isinstance(make_reporter(cfg), PlainReporter)  # pytest's stdout is not a TTY
    with make_reporter(cfg) as r:  # the train command's usage: a context manager with .event
        r.event(RunStarted(run_dir="/r", slots=1, gpu=True, nodes=6))


WAITING = ("level1.Romance trial t1 has waited 61 s for 1 worker(s) x {CPU: 1}; free CPU 0.98/2; "
           "held: {CPU: 1} by level1.Germanic trial t0 (its run is over)")


def test_a_waiting_node_is_shown_until_it_trains_again(tmp_path):
    out = io.StringIO()
    plain = PlainReporter(config(tmp_path), tree=tree_of(config(tmp_path)), stream=out, progress_every=None)
    plain.event(NodeStarted(node="level1.Romance", workers=1))
    plain.event(NodeWaiting(node="level1.Romance", trial="t1", waited=61.0, message=WAITING))
    assert f"level1.Romance: WAITING for resources: {WAITING}" in out.getvalue()

    live = LiveReporter(config(tmp_path), tree=tree_of(config(tmp_path)),
                        console=Console(file=io.StringIO(), force_terminal=True, width=300))
    live.event(NodeStarted(node="level1.Romance", workers=1))
    live.event(NodeWaiting(node="level1.Romance", trial="t1", waited=61.0, message=WAITING))
    frame = io.StringIO()
    Console(file=frame, force_terminal=True, width=300).print(live.render())
    text = plain_text(frame.getvalue())
    assert f"⏳ {WAITING}" in text and re.search(r"Romance\s+▶ waiting", text)
    live.view.apply_snapshot({"level1.Romance": Progress(node="level1.Romance", step=3, phase="train",
                                                         time=time.time() + 1)})
    frame = io.StringIO()
    Console(file=frame, force_terminal=True, width=300).print(live.render())
    assert "⏳" not in plain_text(frame.getvalue())  # it trains again: the note goes


def test_live_view_of_a_big_tree_is_a_line_per_level_and_the_running_nodes(tmp_path):
    """67 nodes on a 25-line terminal: one summary per level, the running and failed nodes in full."""
    rows = [f"l{i:03d}_Latn,World,Family{i % 6},Lang{i:03d}" for i in range(60)]
    (tmp_path / "big.csv").write_text("code,level0,level1,language\n" + "\n".join(rows) + "\n")
    cfg = make_config(None, {}, [f"tree.file={tmp_path / 'big.csv'}", "tree.levels=[level0, level1, language]"])
    tree = tree_of(cfg)
    console = Console(file=io.StringIO(), force_terminal=True, width=140, height=25)
    reporter = LiveReporter(cfg, tree=tree, console=console)
    for event in [RunStarted("/runs/big", 8, True, len(tree.nodes)), NodeStarted("level0.World", 8),
                  NodeDone("level0.World", NodeMetrics(val_loss=2.0)), NodeStarted("level1.Family0", 4),
                  NodeStarted("level1.Family1", 4), NodeFailed("level1.Family2", "RuntimeError: out of memory")]:
        reporter.view.apply_event(event)
    frame = io.StringIO()
    Console(file=frame, force_terminal=True, width=140).print(reporter.render())
    lines = plain_text(frame.getvalue()).splitlines()
    assert len(tree.nodes) == 67 and len(lines) < 25
    assert "1/67 done" in lines[0]
    assert any(line.startswith("level0 (1 node)") and "1/1 done" in line for line in lines)
    level1 = next(line for line in lines if line.startswith("level1 (6 nodes)"))
    assert "0/6 done · 2 running · 1 failed · 3 pending" in level1
    assert "60 pending" in next(line for line in lines if line.startswith("language (60 nodes)"))
    assert sum("Family0" in line or "Family1" in line for line in lines) == 2  # the running nodes, in full
    assert any("Family2" in line and "failed" in line for line in lines)
    assert not any("Lang007" in line for line in lines)  # pending leaves only in the counts
