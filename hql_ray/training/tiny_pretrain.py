"""The demo's base model, "tiny-pretrained": the random tiny mT5 given a short pre-training of its own.

WHY: LoRA adapts what a base model already knows. mT5-large knows languages; the random tiny mT5 knows
nothing, so the old demo's tree of adapters learnt little more than letter frequencies (its leaves wrote
repeated syllables, chrF++ 6-12). This is the stand-in for mT5's pre-training: the tiny mT5, every
weight trained (plain PyTorch, AdamW, on the CPU), on AMR-to-text over the *training* split of the bundled
sample corpus in all its languages, with the tree's prompts. It never reads a validation or test split,
so the demo's scores stay honest; the LoRA tree then adapts a base that knows the task roughly.

Its tokenizer is not ByT5's bytes but a small byte-level BPE (1,000 tokens, like mT5's SentencePiece in
kind, not in size) learnt from the same training split, deterministically, whenever it is asked for: a
graph is ~40 tokens instead of ~110 bytes and a sentence ~10 instead of ~35, so every step of the
pre-training and of the demo's nodes costs about a third, and a word is one or two tokens to learn rather
than a spelling. Byte-level, so no text is ever out of its vocabulary.

Built once into ``<models_dir>/tiny-mt5-pretrained-v1`` (seeded, so the same weights each time on a
machine; a file lock makes concurrent Ray workers wait for the one that builds it, then load its folder),
with ``pretraining.json`` beside the weights: settings, data, loss curve and cost.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import torch

from hql_ray.data import batching, corpus
from hql_ray.data.dataset import make_pair
from hql_ray.settings import bundled
from hql_ray.settings.errors import InputError
from hql_ray.settings.tree import load_tree

log = logging.getLogger(__name__)

SAMPLE_DIR = bundled.sample_dir()  # the bundled sample (python data/make_sample.py data/sample), also in a wheel
LANGUAGE_FILE = bundled.language_file("12langs_pthql.csv")  # its languages' prompt names
PRETRAIN_SPLIT = "train"  # never validation or test: the demo scores on those


@dataclass(frozen=True)
class PretrainSettings:
    """How the tiny base is pre-trained (part of its folder's name through the version: bump it)."""

    steps: int = 500
    batch_size: int = 32
    learning_rate: float = 6e-3
    warmup_steps: int = 30
    max_grad_norm: float = 1.0
    seed: int = 0
    # torch threads while pre-training. One: on a busy 2-core machine two threads made a step ~15x slower
    # (threads spinning at each op's barrier), and a matrix of width 64 gains little from more.
    threads: int = 1


BPE_NAME = "tiny-pretrained-bpe-v1"  # the tokenizer's name (the tokenization cache's key): bump when it changes
BPE_VOCAB = 1000
SPECIAL_TOKENS = ["<pad>", "</s>", "<unk>"]  # ids 0, 1, 2 as in T5: pad = decoder start, eos


def sample_languages(language_file: str | Path = LANGUAGE_FILE) -> list[tuple[str, str]]:
    """(code, prompt name) of the bundled sample's languages, as the demo's tree names them."""
    tree = load_tree(language_file, ["language"])
    return [(lang.code, lang.name) for lang in tree.languages]


def pretraining_pairs(data_dir: str | Path, languages: Iterable[tuple[str, str]],
                      direction: str = "amr2text") -> list[tuple[str, str]]:
    """(prompted source, target) over every corpus of ``data_dir``, training split only."""
    pairs = []
    for code, name in languages:
        examples, _ = corpus.load_examples(data_dir, code, PRETRAIN_SPLIT)
        pairs.extend(make_pair(direction, name, ex.amr, ex.text) for ex in examples)
    if not pairs:
        raise InputError("no training examples to pre-train the tiny model on", path=data_dir)
    return pairs


@lru_cache(maxsize=4)
def sample_tokenizer(data_dir: str = str(SAMPLE_DIR), vocab_size: int = BPE_VOCAB):
    """The tiny-pretrained base's tokenizer: byte-level BPE learnt from the sample's training split
    (sources and targets, all languages, sorted: the same merges in every process)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if not Path(data_dir).is_dir():
        raise InputError("the tiny-pretrained tokenizer is learnt from the bundled sample corpus "
                         "(python data/make_sample.py data/sample)", path=data_dir)
    lines = sorted(line for pair in pretraining_pairs(data_dir, sample_languages()) for line in pair)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(lines, trainer)
    bpe.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   name_or_path=BPE_NAME)


@contextmanager
def _threads(n: int):
    """The pre-training's torch threads, the caller's afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _batch(src: list[list[int]], tgt: list[list[int]], rows: list[int], pad_id: int) -> dict:
    return batching.collate([{"input_ids": src[i], "labels": tgt[i]} for i in rows], pad_id)


def pretrain(model, tokenizer, pairs: list[tuple[str, str]], settings: PretrainSettings,
             on_step: Callable[[int, float], None] | None = None) -> list[float]:
    """Train every weight of ``model`` on ``pairs`` (CPU, AdamW, linear warm-up and decay, ``settings.threads``
    torch threads); the loss per step."""
    with _threads(settings.threads):
        return _pretrain(model, tokenizer, pairs, settings, on_step)


def _pretrain(model, tokenizer, pairs, settings: PretrainSettings, on_step) -> list[float]:
    src = tokenizer([s for s, _ in pairs]).input_ids
    tgt = tokenizer(text_target=[t for _, t in pairs]).input_ids
    lengths = [len(s) + len(t) for s, t in zip(src, tgt)]
    params = [p for p in model.parameters()]
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=0.0)
    warm, total = max(1, settings.warmup_steps), settings.steps
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warm) * max(0.0, (total - s) / max(1, total - warm)))
    model.train()
    losses, epoch = [], 0
    while len(losses) < total:
        for rows in batching.length_grouped_batches(lengths, settings.batch_size, seed=settings.seed * 1000 + epoch):
            loss = model(**_batch(src, tgt, rows, tokenizer.pad_token_id)).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, settings.max_grad_norm)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
            if on_step is not None:
                on_step(len(losses), losses[-1])
            if len(losses) >= total:
                break
        epoch += 1
    model.eval()
    return losses


DEFAULT_SETTINGS = PretrainSettings()


def pretrain_into(folder: Path, config, tokenizer, save: Callable[[object, Path], None], *,
                  data_dir: str | Path = SAMPLE_DIR, languages: list[tuple[str, str]] | None = None,
                  settings: PretrainSettings | None = None) -> dict:
    """Build the tiny mT5 from ``config`` (seeded), pre-train it and ``save`` it with its record into ``folder``."""
    from transformers import MT5ForConditionalGeneration

    settings = settings or DEFAULT_SETTINGS

    if not Path(data_dir).is_dir():
        raise InputError("the tiny model's pre-training needs the bundled sample corpus "
                         "(python data/make_sample.py data/sample)", path=data_dir)
    languages = languages if languages is not None else sample_languages()
    pairs = pretraining_pairs(data_dir, languages)
    started = time.time()

    def progress(step: int, loss: float) -> None:
        if step % 50 == 0 or step == settings.steps:
            log.info("tiny-pretrained: step %d/%d loss %.3f (%.0f s)", step, settings.steps, loss,
                     time.time() - started)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        model = MT5ForConditionalGeneration(config)
        losses = pretrain(model, tokenizer, pairs, settings, on_step=progress)
    record = {
        "settings": asdict(settings),
        "data_dir": str(data_dir),
        "split": PRETRAIN_SPLIT,
        "languages": [code for code, _ in languages],
        "examples": len(pairs),
        "epochs": round(settings.steps * settings.batch_size / len(pairs), 2),
        "loss_first": losses[0],
        "loss_last_50": sum(losses[-50:]) / len(losses[-50:]),
        "loss_curve": [round(sum(losses[i:i + 25]) / len(losses[i:i + 25]), 4) for i in range(0, len(losses), 25)],
        "seconds": round(time.time() - started, 1),
        "threads": settings.threads,
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    if not math.isfinite(record["loss_last_50"]):
        raise RuntimeError(f"the tiny model's pre-training diverged (loss {record['loss_last_50']})")
    save(model, folder)
    tokenizer.save_pretrained(folder)
    (folder / "pretraining.json").write_text(json.dumps(record, indent=1))
    return record


@contextmanager
def build_lock(cache_dir: Path, name: str):
    """An exclusive file lock next to the built folder: concurrent builders wait, one builds."""
    import fcntl

    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / f".{name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
