"""Dropout per example (hql_ray.training.dropout): a node's result does not depend on its number of workers.

Masks are a hash of (node seed, step, example row, site, coordinates): the unit tests check that nothing
else moves them and that they keep 1 - p of the elements; the node tests train the same node with dropout
on 1, 2 and 4 workers (real torch.distributed over gloo in local processes, as a Ray Train worker group
has) and compare validation losses and adapters.
"""

from __future__ import annotations

import multiprocessing
import os

import pytest
import torch
from transformers import MT5ForConditionalGeneration

from conftest import tiny_overrides
from hql_ray.settings.config import make_config
from hql_ray.training import dropout, modeling
from hql_ray.training.context import LocalContext
from hql_ray.training.node import setup, train_node
from test_global_batch import GERMAN, DistContext, free_port, val_losses

# Dropout on: mT5's own (0.1, the tiny config's default: attention, feed-forward, residuals) and LoRA's.
# Other settings as test_global_batch's exact comparison: 6 steps, lora in fp32, validation every 2 steps.
DROPOUT = {"train.max_steps": 6, "train.eval_every": 2, "train.epochs": 3, "eval.generate": "false",
           "model.lora.dropout": 0.1, "model.mode": "lora", "train.learning_rate": 3e-3}


# ---- the masks -------------------------------------------------------------------------------------
def test_masks_depend_only_on_seed_step_and_row():
    shape = (3, 7, 16)
    keys = dropout.example_keys(11, 4, [5, 9, 2])
    mask = dropout.keep_mask(keys, site=123, shape=torch.Size(shape), p=0.5)
    # row 9 alone, in a micro-batch padded to another length: the same draws where both have elements
    alone = dropout.keep_mask(dropout.example_keys(11, 4, [9]), 123, torch.Size((1, 12, 16)), 0.5)
    assert torch.equal(alone[0, :7], mask[1])
    assert torch.equal(dropout.keep_mask(dropout.example_keys(11, 4, [2, 5]), 123, torch.Size((2, 7, 16)), 0.5),
                       mask[[2, 0]])
    for other in (dropout.example_keys(12, 4, [5]), dropout.example_keys(11, 5, [5]), dropout.example_keys(11, 4, [6])):
        assert not torch.equal(dropout.keep_mask(other, 123, torch.Size((1, 7, 16)), 0.5)[0], mask[0])
    assert not torch.equal(dropout.keep_mask(keys, 124, torch.Size(shape), 0.5), mask)  # another site


@pytest.mark.parametrize("p", [0.05, 0.1, 0.5])
def test_keep_rate_and_independence(p):
    keys = dropout.example_keys(0, 0, range(64))
    a = dropout.keep_mask(keys, 1, torch.Size((64, 128, 128)), p).double()
    b = dropout.keep_mask(keys, 2, torch.Size((64, 128, 128)), p).double()
    n = a.numel()
    sigma = (p * (1 - p) / n) ** 0.5
    assert abs(a.mean().item() - (1 - p)) < 5 * sigma
    both = (1 - p) ** 2
    assert abs((a * b).mean().item() - both) < 5 * (both * (1 - both) / n) ** 0.5  # two sites: independent
    neighbours = (a[..., 1:] * a[..., :-1]).mean().item()  # adjacent elements: independent
    assert abs(neighbours - both) < 5 * (both * (1 - both) / n) ** 0.5
    for k in (2, 3, 64):  # and further apart along the last dimension
        assert abs((a[..., k:] * a[..., :-k]).mean().item() - both) < 5 * (both * (1 - both) / n) ** 0.5
    # no example, row or coordinate kept more than another (spread as binomial draws would be)
    for dims, count in (((1, 2), 128 * 128), ((0, 2), 64 * 128), ((0, 1), 64 * 128)):
        assert a.mean(dim=dims).std().item() < 1.3 * (p * (1 - p) / count) ** 0.5
    assert dropout.keep_mask(keys, 1, torch.Size((64,)), p).double().mean().item() == pytest.approx(1 - p, abs=0.2)


def tiny_batch():
    torch.manual_seed(0)
    ids = torch.randint(2, 300, (3, 11))
    attention = torch.ones_like(ids)
    attention[1, 7:], ids[1, 7:] = 0, 0
    labels = torch.randint(2, 300, (3, 5))
    labels[2, 3:] = -100
    return {"input_ids": ids, "attention_mask": attention, "labels": labels}


def example_losses(model, batch, picks, rows, step=3):
    """Per-example summed token losses of the examples `picks` of `batch`, padded only to their own width."""
    sub = {k: v[picks] for k, v in batch.items()}
    width = int(sub["attention_mask"].sum(1).max())
    sub["input_ids"], sub["attention_mask"] = sub["input_ids"][:, :width], sub["attention_mask"][:, :width]
    sub["labels"] = sub["labels"][:, :int((sub["labels"] != -100).sum(1).max())]
    logits = model(**dropout.use(model, dropout.tag(sub, 7, step, rows))).logits
    return torch.nn.functional.cross_entropy(logits.transpose(1, 2), sub["labels"], reduction="none").sum(1)


def test_the_model_drops_per_example_and_is_unchanged_in_eval():
    torch.manual_seed(0)
    model = MT5ForConditionalGeneration(modeling.tiny_config())
    plain = MT5ForConditionalGeneration(modeling.tiny_config())
    plain.load_state_dict(model.state_dict())
    dropout.install(model)
    assert not any(isinstance(m, torch.nn.Dropout) for m in model.modules())
    assert model.config._attn_implementation == dropout.ATTENTION
    batch = tiny_batch()
    model.eval(), plain.eval()
    assert torch.equal(model(**batch).logits, plain(**batch).logits)  # eval: SDPA, no dropout, as before

    model.train()
    whole = example_losses(model, batch, [0, 1, 2], [10, 11, 12])
    split = torch.cat([example_losses(model, batch, [0], [10]), example_losses(model, batch, [2, 1], [12, 11]).flip(0)])
    assert torch.allclose(whole, split, rtol=1e-5)  # other micro-batches, other padding: the same masks
    assert torch.equal(whole, example_losses(model, batch, [0, 1, 2], [10, 11, 12]))
    assert not torch.allclose(whole, example_losses(model, batch, [0, 1, 2], [10, 11, 12], step=4), rtol=1e-3)
    model.eval()
    assert torch.equal(model(**batch).logits, plain(**batch).logits)


def test_attention_without_dropping_is_sdpa():
    """The explicit attention path (taken in training) computes what SDPA does when nothing is dropped."""
    torch.manual_seed(0)
    model = MT5ForConditionalGeneration(modeling.tiny_config())
    plain = MT5ForConditionalGeneration(modeling.tiny_config())
    plain.load_state_dict(model.state_dict())
    dropout.install(model).train()
    for module in model.modules():  # p so small that the threshold rounds to 0: every element kept
        if isinstance(module, dropout.ExampleDropout):
            module.p = 1e-12
        if hasattr(module, "example_dropout_site"):
            module.dropout = 1e-12
    batch = tiny_batch()
    ours = model(**dropout.use(model, dropout.tag(batch, 0, 0, [0, 1, 2]))).logits
    assert torch.allclose(ours, plain.eval()(**batch).logits, atol=1e-4)


def test_keys_must_match_the_batch():
    model = dropout.install(MT5ForConditionalGeneration(modeling.tiny_config())).train()
    batch = tiny_batch()
    dropout.use(model, dropout.tag(batch, 0, 0, [0, 1]))
    with pytest.raises(RuntimeError, match="dropout keys for 2 examples but a batch of 3"):
        model(**batch)


def test_the_node_model_has_no_torch_dropout_left(tmp_path, small_corpus, four_language_tree):
    cfg = make_config(overrides=tiny_overrides(tmp_path, small_corpus, four_language_tree, **DROPOUT))
    st = setup(cfg.with_absolute_paths(), GERMAN, [], LocalContext(device="cpu"))
    lora = [m for n, m in st.model.named_modules() if ".lora_dropout." in n]
    assert lora and all(isinstance(m, dropout.ExampleDropout) and m.p == 0.1 for m in lora)
    assert not any(isinstance(m, torch.nn.Dropout) for m in st.model.modules())


def test_example_dropout_off_keeps_torchs_dropout(tmp_path, small_corpus, four_language_tree):
    """train.example_dropout false: the model as transformers and PEFT build it (torch's dropout, fewer ops)."""
    cfg = make_config(overrides=tiny_overrides(tmp_path, small_corpus, four_language_tree,
                                               **{**DROPOUT, "train.example_dropout": "false"}))
    st = setup(cfg.with_absolute_paths(), GERMAN, [], LocalContext(device="cpu"))
    lora = [m for n, m in st.model.named_modules() if ".lora_dropout." in n]
    assert lora and not any(isinstance(m, dropout.ExampleDropout) for m in st.model.modules())
    assert any(isinstance(m, torch.nn.Dropout) and m.p == 0.1 for m in lora)
    assert getattr(st.model, "example_dropout", None) is None


# ---- a node on 1, 2 and 4 workers -------------------------------------------------------------------
# Measured (2-core CPU, this config): 2 and 4 workers end within 8e-8 of one worker's validation losses
# (relative) and 3e-7 of its adapter (largest difference / largest value); with torch's batch-shaped masks
# (the old way) 2 workers end 1.6 % and 20 % away.
LOSS_TOLERANCE = 1e-5  # relative, per validation
ADAPTER_TOLERANCE = 1e-4  # largest difference over the largest value


class StopForResize(Exception):
    """Stops a worker group at a checkpoint, as the driver does to resize a node."""


class GroupContext(DistContext):
    """A worker of a group whose rank 0 keeps checkpoints under `root` (what Ray Train's storage does);
    with `stop_at`, the group stops after the checkpoint of that step."""

    def __init__(self, rank: int, world_size: int, root: str, stop_at: int | None = None):
        super().__init__(rank, world_size)
        self.storage, self.stop_at = LocalContext(checkpoint_root=root), stop_at

    def latest_checkpoint(self):
        return self.storage.latest_checkpoint()

    def report(self, metrics: dict, checkpoint_dir=None) -> None:
        if checkpoint_dir is not None:
            self.storage.report(metrics, checkpoint_dir)
        if self.stop_at is not None and metrics.get("step") == self.stop_at:
            raise StopForResize()


def config(tmp_path, small_corpus, tree, **extra):
    return make_config(overrides=tiny_overrides(tmp_path, small_corpus, tree, **{**DROPOUT, **extra})
                       ).with_absolute_paths()


def _worker(rank: int, world_size: int, port: int, cfg, options: dict, out) -> None:
    torch.set_num_threads(1)
    if options.get("torch_dropout"):  # the old way, for contrast: no keys, so torch's RNG draws batch-shaped masks
        dropout.use = lambda model, batch: {k: v for k, v in batch.items() if k != dropout.KEYS}
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        ctx = GroupContext(rank, world_size, options.get("root") or f"/nonexistent/{port}", options.get("stop_at"))
        result = train_node(cfg, GERMAN, [], ctx)
        # numpy, not tensors: a tensor crosses the queue as shared memory that dies with this process
        state = {k: v.numpy().copy() for k, v in result.adapter.tensors.items()} if rank == 0 else None
        out.put((rank, val_losses(result), state, result.metrics.resumed_from_step))
    except StopForResize:
        out.put((rank, None, None, None))
    finally:
        torch.distributed.destroy_process_group()


def on_workers(cfg, world_size: int, **options) -> tuple[list[float] | None, dict | None, int | None]:
    """Train GERMAN on `world_size` local processes: rank 0's validation losses, adapter, and the step it
    resumed from (None: a fresh start)."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_worker, args=(r, world_size, port, cfg, options, queue)) for r in range(world_size)]
    for p in procs:
        p.start()
    results = {rank: rest for rank, *rest in (queue.get(timeout=900) for _ in procs)}
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert all(results[r][0] == results[0][0] for r in results)  # validation summed over workers: one number
    losses, state, resumed = results[0]
    return losses, state and {k: torch.from_numpy(v) for k, v in state.items()}, resumed


def adapter_gap(a: dict, b: dict) -> float:
    """Largest difference over the adapter's tensors, relative to the largest value."""
    return max((a[k] - b[k]).abs().max().item() for k in a) / max(a[k].abs().max().item() for k in a)


@pytest.fixture(scope="module")
def one_worker(tmp_path_factory, small_corpus, four_language_tree):
    cfg = config(tmp_path_factory.mktemp("one"), small_corpus, four_language_tree)
    torch.set_num_threads(1)
    result = train_node(cfg, GERMAN, [], LocalContext(device="cpu"))
    assert val_losses(result)[-1] < 0.9 * val_losses(result)[0]  # it trained: the comparison means something
    return cfg, val_losses(result), result.adapter.tensors


def assert_alike(losses: list[float], adapter: dict, _resumed: int | None, single: list[float],
                 single_adapter: dict) -> None:
    assert len(losses) == len(single) == 4  # steps 0, 2, 4, 6
    assert losses == pytest.approx(single, rel=LOSS_TOLERANCE)
    assert adapter_gap(adapter, single_adapter) < ADAPTER_TOLERANCE


def test_two_workers_end_as_one_with_dropout(one_worker):
    cfg, single, adapter = one_worker
    assert_alike(*on_workers(cfg, 2), single, adapter)


@pytest.mark.slow
def test_four_workers_and_a_growth_from_two_to_four_end_as_one(one_worker, tmp_path):
    cfg, single, adapter = one_worker
    assert_alike(*on_workers(cfg, 4), single, adapter)
    # grown at a checkpoint: 2 workers to step 2, then 4 from that checkpoint (the driver's resize)
    assert on_workers(cfg, 2, root=str(tmp_path / "grow"), stop_at=2) == (None, None, None)
    grown = on_workers(cfg, 4, root=str(tmp_path / "grow"))
    assert grown[2] == 2  # it went on from the 2 workers' checkpoint
    assert_alike(*grown, single, adapter)
    # the old way (torch's masks, drawn per worker's share of the batch) is far outside the tolerance
    old_losses, old_adapter, _ = on_workers(cfg, 2, torch_dropout=True)
    assert max(abs(a - b) / b for a, b in zip(old_losses, single)) > 100 * LOSS_TOLERANCE
    assert adapter_gap(old_adapter, adapter) > 100 * ADAPTER_TOLERANCE
