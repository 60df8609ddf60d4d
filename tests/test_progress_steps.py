"""Progress of a node's long steps besides training (issue 13): tokenizing each language, generating for each
test set, scoring, and the driver's exports: what the updates say, and that they reach the plain lines and the
live view. No Ray: a LocalContext's on_progress collects the updates, merged as the run board merges them."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pytest
import torch
from rich.console import Console
from transformers import ByT5Tokenizer, MT5Config, MT5ForConditionalGeneration

from hql_ray.data import dataset as ds_lib
from hql_ray.scoring import metrics
from hql_ray.outputs import progress
from hql_ray.settings.config import make_config
from hql_ray.training.context import LocalContext
from hql_ray.scoring.evaluation import evaluate_node
from hql_ray.outputs.progress import LiveReporter, PlainReporter
from hql_ray.settings.records import (ExportDone, ExportStarted, NodeDone, NodeMetrics, NodeStarted, Progress, RunStarted,
                                      Task)

SAMPLE = Path(__file__).resolve().parent.parent / "data" / "sample"
LANGS = [("deu_Latn", "German"), ("nld_Latn", "Dutch")]
NODE = "level1.Germanic"


class Board:
    """The run board's merge (`RunBoard.progress`/`snapshot`) without the actor, fed by a LocalContext."""

    def __init__(self):
        self.data: dict[str, Progress] = {}
        self.updates: list[Progress] = []
        self.snapshot = self  # `board.snapshot.remote()` as BoardPoller calls it

    def remote(self):
        return dict(self.data)

    def progress(self, update: Progress) -> None:
        self.updates.append(update)
        self.data[NODE] = self.data.get(NODE, Progress(node=NODE)).merged(update)

    def context(self) -> LocalContext:
        return LocalContext(on_progress=self.progress)


@pytest.fixture(autouse=True)
def no_spbleu_model(monkeypatch, tmp_path):
    monkeypatch.setattr(metrics.tokenizer_spm, "SACREBLEU_DIR", str(tmp_path / "sacrebleu"))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    for corpus in ("amr3", "flores"):
        for code, _ in LANGS:
            shutil.copytree(SAMPLE / corpus / code, root / corpus / code)
    return root


@pytest.fixture(scope="module")
def tok():
    return ByT5Tokenizer()


def cfg_for(tmp_path, data, **values):
    overrides = {"run.output_dir": tmp_path / "runs", "run.name": "r", "data.dir": data,
                 "data.cache_dir": tmp_path / "cache", "eval.max_new_tokens": 3, "eval.batch_size": 2,
                 "data.max_test_per_language": 5, **values}
    return make_config(overrides=[f"{k}={v}" for k, v in overrides.items()])


def tiny_model(tok):
    torch.manual_seed(0)
    return MT5ForConditionalGeneration(MT5Config(
        vocab_size=len(tok), d_model=32, d_kv=8, d_ff=64, num_layers=1, num_decoder_layers=1, num_heads=2,
        decoder_start_token_id=0, pad_token_id=0, eos_token_id=1))


def tasks(updates: list[Progress]) -> list[str]:
    return [u.task.text() for u in updates if u.task is not None]


# ---- the words ----------------------------------------------------------------------------------
def test_task_text_words_each_step():
    assert Task("tokenize", "deu_Latn", 3, 12, split="train").text() == "tokenizing deu_Latn train (3/12)"
    assert Task("tokenize", "deu_Latn", 1, 2, split="validation", cached=True).text() == \
        "loading deu_Latn validation (1/2, cached)"
    assert Task("generate", "deu_Latn", 3, 12, test_set="flores", done=64, total=1012).text() == \
        "generating flores deu_Latn 64/1012 (language 3/12)"
    assert Task("score", "deu_Latn", 1, 1, test_set="amr3").text() == "scoring amr3 deu_Latn (language 1/1)"
    assert Task("export", "nld_Latn", 2, 2).text() == "exporting nld_Latn (2/2)"
    assert Task("tokenize").phase == "prepare" and Task("generate").phase == Task("score").phase == "evaluate"


def test_step_progress_sends_the_first_and_last_of_a_task_and_throttles_the_rest():
    sent = []
    steps = ds_lib.StepProgress(sent.append, "n", min_interval=3600)
    for done in range(0, 11):
        steps(Task("generate", "deu_Latn", test_set="flores", done=done, total=10))
    steps(Task("score", "deu_Latn", test_set="flores"))
    assert [u.task.done for u in sent] == [0, 10, None]
    assert all(u.node == "n" and u.phase == "evaluate" for u in sent)
    ds_lib.StepProgress(None)(Task("tokenize"))  # nothing to send to: fine

    def broken(update):
        raise RuntimeError("board gone")

    ds_lib.StepProgress(broken)(Task("tokenize", "x"))  # never raises into the node


# ---- from the data and evaluation code -------------------------------------------------------------
def test_tokenizing_each_language_is_reported_then_loading_from_the_cache(tmp_path, data, tok):
    cfg = cfg_for(tmp_path, data)
    settings = ds_lib.DataSettings.from_config(cfg)
    board = Board()
    ds_lib.node_dataset(settings, LANGS, "train", tok, cfg.cache_dir, progress=board.context().progress)
    assert tasks(board.updates) == ["tokenizing deu_Latn train (1/2)", "tokenizing nld_Latn train (2/2)"]
    assert {u.phase for u in board.updates} == {"prepare"}
    board.updates.clear()
    ds_lib.node_dataset(settings, LANGS, "train", tok, cfg.cache_dir, progress=board.context().progress)
    assert tasks(board.updates) == ["loading deu_Latn train (1/2, cached)", "loading nld_Latn train (2/2, cached)"]
    ds_lib.node_dataset(settings, LANGS, "validation", tok, cfg.cache_dir)  # no progress: as before


def test_generation_of_each_test_set_is_reported_batch_by_batch_then_scored(tmp_path, data, tok):
    cfg = cfg_for(tmp_path, data, **{"eval.test_sets": "[flores, amr3]"})
    board = Board()
    steps = ds_lib.StepProgress(board.context().progress, min_interval=0.0)  # every batch
    out = evaluate_node(tiny_model(tok), tok, cfg, ds_lib.DataSettings.from_config(cfg), LANGS, cfg.cache_dir,
                        "cpu", node_id=NODE, progress=steps)
    said = tasks(board.updates)
    n = out["deu_Latn"]["flores"].n
    assert n == 5
    assert said[:5] == ["generating flores deu_Latn 0/5 (language 1/2)", "generating flores deu_Latn 2/5 (language 1/2)",
                        "generating flores deu_Latn 4/5 (language 1/2)", "generating flores deu_Latn 5/5 (language 1/2)",
                        "scoring flores deu_Latn (language 1/2)"]
    assert said[5] == "generating amr3 deu_Latn 0/5 (language 1/2)"
    assert "scoring amr3 nld_Latn (language 2/2)" == said[-1]
    assert all(u.node == NODE and u.phase == "evaluate" for u in board.updates)


def test_default_throttle_still_reports_each_test_set_and_its_end(tmp_path, data, tok):
    cfg = cfg_for(tmp_path, data)
    board = Board()
    evaluate_node(tiny_model(tok), tok, cfg, ds_lib.DataSettings.from_config(cfg), LANGS, cfg.cache_dir, "cpu",
                  node_id=NODE, progress=board.context().progress)
    said = tasks(board.updates)
    for code, i in (("deu_Latn", 1), ("nld_Latn", 2)):
        assert f"generating flores {code} 0/5 (language {i}/2)" in said
        assert f"generating flores {code} 5/5 (language {i}/2)" in said
        assert f"scoring flores {code} (language {i}/2)" in said


# ---- to the terminal ---------------------------------------------------------------------------
def started_reporter(reporter, board: Board):
    reporter.event(RunStarted("runs/r", 1, False, 1))
    reporter.poller.board = board  # polled by hand below (no thread)
    reporter.event(NodeStarted(NODE, 1))
    return reporter


def test_plain_lines_name_the_step_each_node_is_in(tmp_path, data, tok):
    cfg = cfg_for(tmp_path, data)
    board, stream = Board(), io.StringIO()
    reporter = started_reporter(PlainReporter(cfg, stream=stream, progress_every=None, task_every=1e-9), board)
    ctx = board.context()
    ds_lib.node_dataset(ds_lib.DataSettings.from_config(cfg), LANGS, "train", tok, cfg.cache_dir,
                        progress=lambda u: (ctx.progress(u), reporter.poller.poll_once()))
    ctx.progress(Progress(NODE, "train", step=1, total_steps=4, loss=2.0))
    reporter.poller.poll_once()
    assert reporter.view.nodes[NODE].task is None  # training: the board's stale task is not shown
    ctx.progress(Progress(NODE, "evaluate"))
    reporter.poller.poll_once()
    assert reporter.view.nodes[NODE].task is None  # nor the tokenizing while it evaluates
    evaluate_node(tiny_model(tok), tok, cfg, ds_lib.DataSettings.from_config(cfg), LANGS[:1], cfg.cache_dir, "cpu",
                  node_id=NODE, progress=lambda u: (ctx.progress(u), reporter.poller.poll_once()))
    reporter.event(ExportStarted(NODE, "deu_Latn", 1, 2))
    ctx.progress(Progress(NODE, "evaluate", task=Task("score")))  # late worker news: ignored
    reporter.poller.poll_once()
    assert reporter.view.nodes[NODE].phase == "export"
    reporter.event(ExportDone(NODE, "deu_Latn", 1, 2, 0.5))
    reporter.event(NodeDone(NODE, NodeMetrics()))
    text = stream.getvalue()
    for line in (f"{NODE}: tokenizing deu_Latn train (1/2)", f"{NODE}: tokenizing nld_Latn train (2/2)",
                 f"{NODE}: generating flores deu_Latn 0/5 (language 1/1)",
                 f"{NODE}: generating flores deu_Latn 5/5 (language 1/1)",
                 f"{NODE}: scoring flores deu_Latn (language 1/1)",
                 f"{NODE}: exporting deu_Latn (1/2)", f"{NODE}: exported deu_Latn (1/2) in "):
        assert line in text, (line, text)
    assert text.index("tokenizing") < text.index("generating") < text.index("exporting") < text.index("done (1/1)")


def test_task_lines_print_only_what_changed_and_at_most_every_task_every_seconds(tmp_path, data):
    cfg = cfg_for(tmp_path, data)
    board, stream = Board(), io.StringIO()
    reporter = started_reporter(PlainReporter(cfg, stream=stream, progress_every=None, task_every=3600), board)
    for done in (0, 2, 4):
        board.progress(Progress(NODE, "evaluate", task=Task("generate", "deu_Latn", 1, 1, test_set="flores",
                                                             done=done, total=5)))
        reporter.poller.poll_once()
    assert stream.getvalue().count("generating") == 1  # the first, then one per task_every
    reporter._last_task = 0.0
    reporter.poller.poll_once()
    assert "generating flores deu_Latn 4/5" in stream.getvalue()
    reporter._last_task = 0.0
    reporter.poller.poll_once()
    assert stream.getvalue().count("generating") == 2  # unchanged: no new line


def test_live_view_shows_the_step_under_the_table(tmp_path, data):
    cfg = cfg_for(tmp_path, data)
    board = Board()
    reporter = started_reporter(LiveReporter(cfg, console=Console(file=io.StringIO(), width=120)), board)
    board.progress(Progress(NODE, "prepare", task=Task("tokenize", "nld_Latn", 2, 2, split="train")))
    reporter.poller.poll_once()
    console = Console(file=io.StringIO(), width=120)
    console.print(reporter.render())
    shown = console.file.getvalue()
    assert "preparing" in shown and f"▸ {NODE}: tokenizing nld_Latn train (2/2)" in shown
    reporter.event(ExportStarted(NODE, "deu_Latn", 1, 1))
    console = Console(file=io.StringIO(), width=120)
    console.print(reporter.render())
    assert "exporting" in console.file.getvalue() and "exporting deu_Latn (1/1)" in console.file.getvalue()


def test_a_broken_display_never_raises_into_the_driver(tmp_path, data, capsys):
    class Closed(io.StringIO):
        def write(self, text):
            raise OSError("display gone")

    reporter = PlainReporter(cfg_for(tmp_path, data), stream=Closed(), progress_every=None)  # printing fails:
    reporter.event(ExportStarted(NODE, "deu_Latn"))
    reporter.event(ExportDone(NODE, "deu_Latn"))
    assert reporter.errors == 2 and capsys.readouterr().err.count("progress display error") == 1  # said once


# ---- through a whole node (node.py passes ctx.progress on) -------------------------------------------
def test_a_nodes_updates_name_its_tokenizing_and_generation(tmp_path, small_corpus, four_language_tree):
    from conftest import node_spec, tiny_overrides
    from hql_ray.training.node import train_node

    cfg = make_config(overrides=tiny_overrides(tmp_path, small_corpus, four_language_tree, **{
        "train.max_steps": 2, "eval.at_nodes": "all"})).with_absolute_paths()
    board = Board()
    train_node(cfg, node_spec("language.German", [("deu_Latn", "German")]), [], board.context())
    said = tasks(board.updates)
    assert said[:2] == ["tokenizing deu_Latn train (1/1)", "tokenizing deu_Latn validation (1/1)"]
    assert said[-2:] == ["generating flores deu_Latn 2/2 (language 1/1)", "scoring flores deu_Latn (language 1/1)"]
    phases = [u.phase for u in board.updates]
    assert phases.index("prepare") < phases.index("train") < phases.index("evaluate")
