"""train.batch_size is the batch of one optimizer step, whatever the workers or micro-batches.

A node on 2 data-parallel workers (real torch.distributed over gloo, no Ray) and a node that
accumulates micro-batches both follow the same validation losses as one worker taking the whole
batch at once: only the order of float additions differs.
"""

from __future__ import annotations

import multiprocessing
import os
import socket

import pytest
import torch

from conftest import tiny_overrides
from hql_ray.data import batching
from hql_ray.settings.config import make_config
from hql_ray.training.context import LocalContext, NodeContext
from hql_ray.data.batch_plan import global_batch
from hql_ray.training.node import node_seed, train_node
from conftest import node_spec

GERMAN = node_spec("language.German", [("deu_Latn", "German")])
# 6 steps at the tests' usual lr: enough to train, too few for float-order differences to grow
EXACT = {"train.max_steps": 6, "train.eval_every": 2, "train.epochs": 3, "eval.generate": "false",
         "model.lora.dropout": 0, "model.mode": "lora", "train.learning_rate": 3e-3}


def config(tmp_path, small_corpus, tree, **extra) -> dict:
    values = {**EXACT, **extra}
    return make_config(overrides=tiny_overrides(tmp_path, small_corpus, tree, **values)
                       ).with_absolute_paths()


def val_losses(result) -> list[float]:
    return [h.val_loss for h in result.history if h.val_loss is not None]


class DistContext(NodeContext):
    """One of several local processes joined by torch.distributed (what a Ray Train worker has)."""

    def __init__(self, rank: int, world_size: int):
        self.rank, self.world_size = rank, world_size

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")


def no_dropout() -> None:
    """mT5's own dropout (0.1) draws from each process's RNG in batch-shaped masks: off, so that only
    float order separates the runs."""
    torch.nn.Dropout.forward = lambda self, x: x
    torch.nn.functional.dropout = lambda x, *args, **kwargs: x  # T5's attention calls it directly


def _worker(rank: int, world_size: int, port: int, cfg: dict, out) -> None:
    torch.set_num_threads(1)
    no_dropout()
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        result = train_node(cfg, GERMAN, [], DistContext(rank, world_size))
        out.put((rank, val_losses(result), result.metrics.steps))
    finally:
        torch.distributed.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def without_dropout(monkeypatch):
    monkeypatch.setattr(torch.nn.Dropout, "forward", lambda self, x: x)
    monkeypatch.setattr(torch.nn.functional, "dropout", lambda x, *args, **kwargs: x)


def test_two_workers_follow_one_worker(tmp_path, small_corpus, four_language_tree, without_dropout):
    cfg = config(tmp_path, small_corpus, four_language_tree)
    torch.set_num_threads(1)
    one = train_node(cfg, GERMAN, [], LocalContext(device="cpu"))

    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_worker, args=(r, 2, port, cfg, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = dict((rank, (losses, steps)) for rank, losses, steps in (queue.get(timeout=300) for _ in procs))
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert results[0] == results[1]  # validation is summed over both workers: the same number on each
    two, steps = results[0]
    assert steps == one.metrics.steps == 6
    assert len(two) == len(val_losses(one)) == 4  # steps 0, 2, 4, 6
    assert val_losses(one)[-1] < 0.9 * val_losses(one)[0]  # it trained: the comparison means something
    # Adafactor normalises each update, so float-order differences (gradients agree to ~5e-7 of their
    # size) grow to ~0.2 % of the loss in 6 steps. The old scaling (batch 8 per worker = 16 per step on
    # 2 workers) moves it by far more: the test tells the two apart.
    old_scaling = train_node(config(tmp_path / "b16", small_corpus, four_language_tree, **{"train.batch_size": 16}),
                             GERMAN, [], LocalContext(device="cpu"))
    assert two[0] == pytest.approx(val_losses(one)[0], rel=1e-6)  # same start: the same LoRA init on both workers
    for ours, single, scaled in list(zip(two, val_losses(one), val_losses(old_scaling)))[1:]:
        assert abs(ours - single) < 0.01 * single
        assert abs(ours - single) < 0.2 * abs(scaled - single)


def test_micro_batches_follow_one_pass(tmp_path, small_corpus, four_language_tree, without_dropout):
    whole = train_node(config(tmp_path / "a", small_corpus, four_language_tree), GERMAN, [], LocalContext())
    micro = train_node(config(tmp_path / "b", small_corpus, four_language_tree, **{"train.micro_batch_size": 3}),
                       GERMAN, [], LocalContext())
    assert val_losses(micro) == pytest.approx(val_losses(whole), rel=1e-3)
    assert val_losses(whole)[-1] < 0.9 * val_losses(whole)[0]


def test_batch_per_worker_is_the_explicit_old_scaling(tmp_path, small_corpus, four_language_tree):
    cfg = make_config(overrides=tiny_overrides(tmp_path, small_corpus, four_language_tree))
    assert global_batch(cfg.train, 4) == 8
    cfg.train.batch_per_worker = True
    assert global_batch(cfg.train, 4) == 32


def test_worker_shares_cover_the_batch_once():
    batch = list(range(7))
    shares = [batching.worker_share(batch, r, 3) for r in range(3)]
    assert sorted(i for s in shares for i in s) == batch
    assert batching.micro_batches([1, 2, 3, 4, 5], 2) == [[1, 2], [3, 4], [5]]
    assert batching.micro_batches([1, 2, 3], None) == [[1, 2, 3]] and batching.micro_batches([], 2) == []


def test_each_node_has_its_own_seed():
    seeds = {node_seed(0, n) for n in ("level0.Indo_European", "level1.Germanic", "language.German")}
    assert len(seeds) == 3
    assert node_seed(0, "language.German") == node_seed(0, "language.German") != node_seed(1, "language.German")
