"""hql_ray.training.step: the node's step on CPU, each train: key against the original's eager fp32 step.

Tolerances (tiny model, 6 optimizer steps, validation loss after steps 2, 4 and 6):
- train.host_sync log: the same numbers as step (only when they are read changes): equal.
- train.precision bf16: within 3 % of fp32 (bf16 keeps 8 bits of mantissa; Adafactor normalises updates).
- train.batch_tokens: other batches, so not the same curve: it trains, and within 10 % of batch_size 8's.
- train.dequantized_base: the same numbers bitsandbytes computes (its default path dequantizes, then multiplies):
  equal.
- train.pad_to_multiple: padding is masked: one forward's loss within 1e-6; the history within 1 % (sums over
  longer rows round differently, and Adafactor's normalised updates grow that, as in tests/test_global_batch.py).
- train.compile_blocks: within 1e-3 (aot_eager runs the same aten ops; tests/test_step_compile.py, slow).
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from conftest import node_spec, tiny_overrides
from hql_ray.settings.config import ConfigError, LoraShape, make_config
from hql_ray.training import handoff, modeling, step
from hql_ray.training.context import LocalContext
from hql_ray.training.node import train_node

GERMAN = node_spec("language.German", [("deu_Latn", "German")])
BASE = {"train.max_steps": 6, "train.eval_every": 2, "train.epochs": 3, "eval.generate": "false",
        "model.lora.dropout": 0, "model.mode": "qlora", "train.learning_rate": 3e-3, "train.log_every": 3}
SYNCS = {"aten::_local_scalar_dense", "aten::is_nonzero", "aten::item", "aten::equal"}


class SyncCounter(TorchDispatchMode):
    """Host syncs as the dispatcher sees them (a value read back from a tensor)."""

    def __init__(self):
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.n += func.name() in SYNCS
        return func(*args, **(kwargs or {}))


def run(tmp_path, corpus, tree, **extra):
    cfg = make_config(overrides=tiny_overrides(tmp_path, corpus, tree, **{**BASE, **extra})).with_absolute_paths()
    result = train_node(cfg, GERMAN, [], LocalContext(device="cpu"))
    return [h.val_loss for h in result.history if h.val_loss is not None], result


@pytest.fixture
def without_dropout(monkeypatch):
    """mT5's own dropout (0.1) draws batch-shaped masks: off, so that only arithmetic separates the runs."""
    monkeypatch.setattr(torch.nn.Dropout, "forward", lambda self, x: x)
    monkeypatch.setattr(torch.nn.functional, "dropout", lambda x, *args, **kwargs: x)


@pytest.fixture(scope="module")
def tiny_qlora():
    with tempfile.TemporaryDirectory() as tmp:
        path = modeling.resolve_base_model("tiny", Path(tmp))
        torch.manual_seed(0)
        model = modeling.load_base_model(path, "qlora", torch.device("cpu"))
        model = handoff.attach_node_adapter(model, LoraShape(r=4, alpha=4, dropout=0.0), "stack", [])
        yield model.eval()


def batch(seed: int = 0):
    from hql_ray.data.batching import collate

    g = torch.Generator().manual_seed(seed)
    rows = [{"input_ids": torch.randint(3, 250, (int(n),), generator=g).tolist() + [1],
             "labels": torch.randint(3, 250, (int(m),), generator=g).tolist() + [1]}
            for n, m in zip(torch.randint(5, 30, (6,), generator=g), torch.randint(3, 12, (6,), generator=g))]
    return collate(rows, 0)


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_prebuilt_masks_give_the_same_loss_without_a_host_sync(tiny_qlora, implementation):
    model = tiny_qlora
    model.set_attn_implementation(implementation)
    b = batch()
    with torch.no_grad(), SyncCounter() as plain:
        reference = model(**b).loss
    masked = step.prebuilt_masks(b, implementation, model.get_input_embeddings().weight.dtype)
    assert masked["attention_mask"].dim() == 4
    with torch.no_grad(), SyncCounter() as prebuilt:
        loss = model(**masked).loss
    assert plain.n == 2  # transformers' padding_mask.all(): the encoder's mask and the cross-attention's
    assert prebuilt.n == 0
    assert torch.equal(loss, reference)
    model.set_attn_implementation("sdpa")


def test_dequantized_base_computes_what_bitsandbytes_computes(tiny_qlora):
    model = tiny_qlora
    b = batch(1)
    with torch.no_grad():
        reference = model(**b).logits
        base = step.DequantizedBase(model)
        assert len(base.modules) == sum(type(m).__name__ == "Linear4bit" and hasattr(m, "quant_state") is False
                                        and hasattr(m.weight, "quant_state") for m in model.modules()) > 0
        with base.active():
            logits = model(**b).logits
        base.close()
        assert not hasattr(base, "dequantized") and torch.equal(model(**b).logits, reference)
    assert torch.equal(logits, reference)


def test_step_losses_are_read_once_per_read():
    losses = step.StepLosses()
    for value in (1.5, 2.25, 3.0):
        losses.add(torch.tensor(value))
    assert len(losses) == 3 and losses.pending and not losses.values
    assert losses.floats() == [1.5, 2.25, 3.0] and not losses.pending
    losses.add(4.0)  # a float (train.host_sync step) keeps its place
    losses.add(torch.tensor(5.0))
    assert losses.floats() == [1.5, 2.25, 3.0, 4.0, 5.0]


def test_sync_free_step_matches_the_original_exactly(tmp_path, small_corpus, four_language_tree):
    original, _ = run(tmp_path / "a", small_corpus, four_language_tree, **{"train.host_sync": "step"})
    sync_free, result = run(tmp_path / "b", small_corpus, four_language_tree, **{"train.host_sync": "log"})
    assert sync_free == original
    assert original[-1] < 0.9 * original[0]  # it trained: the comparison means something
    curve = [h for h in result.history if h.val_loss is None]
    assert [h.step for h in curve] == [3] and curve[0].train_loss > 0  # log_every 3: one point


def test_bf16_follows_fp32(tmp_path, small_corpus, four_language_tree, without_dropout):
    fp32, _ = run(tmp_path / "a", small_corpus, four_language_tree)
    bf16, _ = run(tmp_path / "b", small_corpus, four_language_tree, **{"train.precision": "bf16"})
    assert bf16 != fp32  # it did run in bf16
    assert bf16 == pytest.approx(fp32, rel=3e-2)


def test_token_budget_batches_train_like_batch_size(tmp_path, small_corpus, four_language_tree, without_dropout):
    eight, _ = run(tmp_path / "a", small_corpus, four_language_tree)
    # ~8 examples' worth of real tokens per step: other batches, the same kind of progress.
    tokens, result = run(tmp_path / "b", small_corpus, four_language_tree, **{"train.batch_tokens": 8 * 150})
    assert tokens[-1] < 0.9 * tokens[0]
    assert tokens[1:] == pytest.approx(eight[1:], rel=0.1)
    assert result.metrics.steps == 6


def test_dequantized_base_trains_like_the_4bit_base(tmp_path, small_corpus, four_language_tree):
    base, _ = run(tmp_path / "a", small_corpus, four_language_tree)
    cached, _ = run(tmp_path / "b", small_corpus, four_language_tree, **{"train.dequantized_base": "true"})
    assert cached == base


def test_pad_to_multiple_changes_shapes_not_losses(tiny_qlora, tmp_path, small_corpus, four_language_tree,
                                                   without_dropout):
    from hql_ray.data.batching import collate

    g = torch.Generator().manual_seed(2)
    rows = [{"input_ids": torch.randint(3, 250, (n,), generator=g).tolist(), "labels": [5] * (n // 3) + [1]}
            for n in (7, 19, 23)]
    plain, bucketed = collate(rows, 0), collate(rows, 0, multiple=32)
    with torch.no_grad():
        assert tiny_qlora(**bucketed).loss.item() == pytest.approx(tiny_qlora(**plain).loss.item(), rel=1e-6)
    unpadded, _ = run(tmp_path / "a", small_corpus, four_language_tree)
    padded, _ = run(tmp_path / "b", small_corpus, four_language_tree, **{"train.pad_to_multiple": 32})
    assert padded[0] == unpadded[0]
    assert padded[1:] == pytest.approx(unpadded[1:], rel=1e-2)


def test_a_failing_compile_falls_back_to_eager_with_a_warning(tmp_path, small_corpus, four_language_tree,
                                                                without_dropout):
    import torch._dynamo

    @torch._dynamo.register_backend(name="hql_test_failing")
    def failing(gm, example_inputs):  # noqa: ARG001
        raise RuntimeError("this backend never compiles")

    eager, _ = run(tmp_path / "a", small_corpus, four_language_tree)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fallen_back, _ = run(tmp_path / "b", small_corpus, four_language_tree, **{
            "train.compile_blocks": "true", "train.compile_backend": "hql_test_failing"})
    assert any("compile_blocks" in str(w.message) and "eagerly" in str(w.message) for w in caught)
    assert fallen_back == pytest.approx(eager, rel=1e-6)


def test_step_keys_are_validated(tmp_path, small_corpus, four_language_tree):
    def config(**extra):
        return make_config(overrides=tiny_overrides(tmp_path, small_corpus, four_language_tree, **extra))

    assert config().train.precision == "fp32" and config().train.host_sync == "log"
    for bad in ({"train.precision": "fp16"}, {"train.host_sync": "never"}, {"train.batch_tokens": 0},
                {"train.pad_to_multiple": -8}, {"train.cuda_graphs": "true"},
                {"train.cuda_graphs": "true", "train.compile_blocks": "true"}):
        with pytest.raises(ConfigError, match="train\\."):
            config(**bad)
    config(**{"train.cuda_graphs": "true", "train.compile_blocks": "true", "train.pad_to_multiple": 64})


class Handle:
    def __init__(self, log, name):
        self.log, self.name = log, name

    def wait(self):
        self.log.append(("wait", self.name))


def test_grad_reducer_launches_buckets_during_the_backward_in_a_fixed_order():
    """A stand-in all-reduce that doubles (two workers with the same gradients) and logs when it is called."""
    torch.manual_seed(0)
    layers = torch.nn.Sequential(*[torch.nn.Linear(16, 16) for _ in range(4)])
    params = list(layers.parameters())
    log = []

    def all_reduce_async(flat):
        flat.mul_(2)
        log.append(("launch", flat.numel()))
        return Handle(log, flat.numel())

    reducer = step.GradReducer(params, all_reduce_async, bucket_mb=2 * 16 * 17 * 4 / 2**20)  # two layers a bucket
    assert [len(b) for b in reducer.buckets] == [4, 4]
    x = torch.randn(3, 16)
    expected = torch.autograd.grad(layers(x).sum(), params)
    reducer.arm()
    loss = layers(x).sum()
    loss.backward()
    launched_in_backward = len(log)
    reducer.finish()
    assert launched_in_backward == 2  # both buckets went as soon as their gradients were there
    assert log == [("launch", 544), ("launch", 544), ("wait", 544), ("wait", 544)]
    for p, g in zip(params, expected):
        assert torch.equal(p.grad, 2 * g)
    reducer.close()
    for p in params:
        p.grad = None
    layers(x).sum().backward()  # hooks removed: nothing launched, nothing doubled
    assert len(log) == 4 and all(torch.equal(p.grad, g) for p, g in zip(params, expected))


def test_grad_reducer_on_a_worker_with_nothing_to_train_sends_zeros():
    params = [torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))]
    sent = []
    reducer = step.GradReducer(params, lambda flat: sent.append(flat.clone()), bucket_mb=0)
    reducer.arm()
    reducer.finish()
    assert len(sent) == 1 and torch.equal(sent[0], torch.zeros(5))
    assert all(torch.equal(p.grad, torch.zeros_like(p)) for p in params)


class Stopped(Exception):
    """What the worker's SIGTERM handler does after the requested checkpoint: the node stops there."""


class StopWhenAsked(LocalContext):
    """A run told to stop (SIGTERM) at the first step the node asks: the node checkpoints, then the worker ends."""

    def checkpoint_requested(self) -> bool:
        return True

    def checkpoint_written(self, step: int) -> None:
        raise Stopped(step)


def test_a_stop_checkpoints_and_resumes_to_the_same_losses(tmp_path, small_corpus, four_language_tree,
                                                          without_dropout):
    """main's checkpoint on request (SIGTERM) and resume, through the StepRunner with losses on the device: a node
    stopped at step 3 (log_every 3, checkpoints every 2) resumes there and ends as the uninterrupted node."""
    whole, _ = run(tmp_path / "a", small_corpus, four_language_tree)
    cfg = make_config(overrides=tiny_overrides(tmp_path / "b", small_corpus, four_language_tree, **BASE)
                      ).with_absolute_paths()
    with pytest.raises(Stopped, match="3"):
        train_node(cfg, GERMAN, [], StopWhenAsked(checkpoint_root=tmp_path / "ckpt", device="cpu"))
    resumed = train_node(cfg, GERMAN, [], LocalContext(checkpoint_root=tmp_path / "ckpt", device="cpu"))
    assert resumed.metrics.resumed_from_step == 3
    assert [h.val_loss for h in resumed.history if h.val_loss is not None] == pytest.approx(whole, rel=1e-5)
