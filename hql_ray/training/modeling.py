"""Base model loading: hub / local / tiny mT5, 4-bit (QLoRA), frozen (LoRA) or trainable (FFT).

Config-free on purpose: plain arguments, so node training, tests and Ray workers call the same code.
The one rule that matters most here: a 4-bit model is placed on its device by ``device_map`` at
load time and never moved with ``.to()`` afterwards (bitsandbytes would re-quantize or break).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from hql_ray.settings.config import MODES, TARGET_MODULES, TINY_BASES
from hql_ray.settings.errors import InputError
from hql_ray.training import tiny_pretrain

TINY = "tiny"
TINY_DIR_NAME = "tiny-mt5-v1"  # bump the suffix whenever the tiny config or its seed changes
# The demo's base: the tiny mT5 pre-trained on the sample's training split, with its own BPE (tiny_pretrain.py).
TINY_PRETRAINED = "tiny-pretrained"
TINY_PRETRAINED_DIR_NAME = "tiny-mt5-pretrained-v1"  # bump whenever its config, data, tokenizer or recipe changes


def load_tokenizer(base_model: str):
    """The tokenizer for ``base_model``: "tiny" is byte-level ByT5 (no files, works offline)."""
    if base_model == TINY:
        from transformers import ByT5Tokenizer

        return ByT5Tokenizer()
    if base_model == TINY_PRETRAINED:
            return tiny_pretrain.sample_tokenizer()
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(base_model)


def tiny_config(vocab: int | None = None, **extra):
    from transformers import ByT5Tokenizer, MT5Config

    vocab = vocab or len(ByT5Tokenizer())
    return MT5Config(
        vocab_size=vocab, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_decoder_layers=2,
        num_heads=4, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
        tie_word_embeddings=False, **extra,
    )


def _looks_like_path(value: str) -> bool:
    """A hub id is ``name`` or ``owner/name``; anything else shaped like a path is a local dir."""
    return (
        value.startswith(("/", "./", "../", "~", "."))
        or os.path.isabs(value)
        or "\\" in value
        or value.count("/") > 1
        or value.endswith("/")
    )


def resolve_base_model(base_model: str, cache_dir: str | Path) -> str:
    """Turn ``base_model`` into something ``from_pretrained`` loads.

    "tiny" builds a random ~222k-parameter mT5 (seed 0, so every process and machine gets the same
    weights) into ``cache_dir/tiny-mt5-v1`` once, atomically: concurrent Ray workers race safely.
    Hub ids and existing local dirs pass through; a path that does not exist is an InputError.
    """
    if base_model == TINY:
        return _build_tiny(Path(cache_dir).expanduser().resolve())
    if base_model == TINY_PRETRAINED:
        return _build_tiny_pretrained(Path(cache_dir).expanduser().resolve())
    expanded = os.path.abspath(os.path.expanduser(base_model))  # absolute: Ray workers have other cwds
    if os.path.exists(expanded):
        if not os.path.isdir(expanded):
            raise InputError("base model is not a directory", path=base_model)
        if not os.path.exists(os.path.join(expanded, "config.json")):
            raise InputError("base model directory has no config.json (not a Hugging Face model)",
                             path=base_model)
        return expanded
    if _looks_like_path(base_model):
        raise InputError("base model directory does not exist", path=base_model)
    return base_model


def base_model_path(cfg) -> str:
    """What a run loads as its base model: a hub name, a local folder, or the built tiny model's folder
    (built once under the config's models_dir)."""
    return resolve_base_model(cfg.model.base, cfg.models_dir)


def tiny_base_built(cfg) -> bool:
    """Whether the demo's pre-trained tiny base (a minute or two to build) is already in models_dir."""
    return cfg.model.base != TINY_PRETRAINED or (cfg.models_dir / TINY_PRETRAINED_DIR_NAME).is_dir()


def _build_tiny(cache_dir: Path) -> str:
    final = cache_dir / TINY_DIR_NAME
    if (final / "config.json").exists() and (final / "model.safetensors").exists():
        return str(final)
    from transformers import ByT5Tokenizer, MT5ForConditionalGeneration

    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{TINY_DIR_NAME}.tmp-", dir=cache_dir))
    try:
        with torch.random.fork_rng(devices=[]):  # do not disturb the caller's RNG stream
            torch.manual_seed(0)
            model = MT5ForConditionalGeneration(tiny_config())
        save_on_any_rank(model, tmp)
        ByT5Tokenizer().save_pretrained(tmp)  # so load_tokenizer(<that dir>) works too
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / "config.json").exists():
                raise
            # another process won the race: theirs has the same weights
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return str(final)


def save_on_any_rank(model, folder: Path) -> None:
    """``save_pretrained`` that writes whatever this process's rank: inside a Ray Train worker group,
    transformers (5.x) lets only torch.distributed rank 0 write the weights whatever ``is_main_process``
    says, and another rank would publish a folder without them."""
    model.should_save_on_this_rank = lambda is_main_process: True  # this instance only
    try:
        model.save_pretrained(folder, safe_serialization=True, is_main_process=True)
    finally:
        del model.should_save_on_this_rank
    if not ((folder / "config.json").exists() and (folder / "model.safetensors").exists()):
        raise RuntimeError(f"saving the tiny model wrote no weights into {folder}")


def _build_tiny_pretrained(cache_dir: Path) -> str:
    """The tiny mT5 (its BPE's vocabulary, no dropout) pre-trained on the sample's training split, once:
    under a file lock (one process builds, the others wait and load), published by an atomic rename."""

    final = cache_dir / TINY_PRETRAINED_DIR_NAME
    if (final / "config.json").exists() and (final / "model.safetensors").exists():
        return str(final)
    with tiny_pretrain.build_lock(cache_dir, TINY_PRETRAINED_DIR_NAME):
        if (final / "config.json").exists() and (final / "model.safetensors").exists():
            return str(final)  # built while this process waited for the lock
        tokenizer = tiny_pretrain.sample_tokenizer()
        tmp = Path(tempfile.mkdtemp(prefix=f".{TINY_PRETRAINED_DIR_NAME}.tmp-", dir=cache_dir))
        try:
            tiny_pretrain.pretrain_into(tmp, tiny_config(len(tokenizer), dropout_rate=0.0), tokenizer, save_on_any_rank)
            os.rename(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return str(final)


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"unknown training mode {mode!r}; valid modes: {', '.join(MODES)}")


def bitsandbytes_available(device: torch.device) -> tuple[bool, str]:
    """Whether 4-bit bitsandbytes runs on ``device``: (ok, reason) so ``qlora`` fails early and clearly."""
    device = torch.device(device)
    try:
        import bitsandbytes.functional as bnbf
    except Exception as exc:  # noqa: BLE001 - any import failure means "no qlora here"
        return False, f"bitsandbytes cannot be imported: {exc}"
    if device.type == "cuda" and not torch.cuda.is_available():
        return False, "CUDA device requested but torch sees no CUDA"
    try:
        x = torch.randn(64, 64, device=device)
        q, state = bnbf.quantize_4bit(x, quant_type="nf4")
        y = bnbf.dequantize_4bit(q, state)
        if not torch.isfinite(y).all():
            return False, f"bitsandbytes 4-bit round trip on {device} gave non-finite values"
    except Exception as exc:  # noqa: BLE001
        return False, f"bitsandbytes 4-bit does not run on {device}: {exc}"
    return True, f"bitsandbytes 4-bit works on {device}"


def make_4bit_cpu_exact(model) -> int:
    """Turn off bnb's AVX512-BF16 CPU repacking on every Linear4bit; returns how many modules.

    On such CPUs bnb repacks 4-bit weights at the first no-grad eval forward and unpacks them at the
    next ``state_dict()``; with double quant that round trip is lossy (logits move ~4e-3), which
    breaks exact hand-off and export checks. The flag only matters on CPU; on CUDA it is inert.
    """
    try:
        from bitsandbytes.nn import Linear4bit
    except Exception:  # noqa: BLE001 - no bnb, nothing to fix
        return 0
    n = 0
    for module in model.modules():
        if isinstance(module, Linear4bit):
            module.support_avx512bf16_for_cpu = False
            n += 1
    return n


def compute_dtype(name: str) -> torch.dtype | None:
    """model.compute_dtype -> a torch dtype; "auto" -> None (the device's default, below)."""
    return None if name == "auto" else getattr(torch, name)


def _default_dtype(device: torch.device) -> torch.dtype:
    # fp16 gives NaNs on T5-family models: bf16 on GPUs, fp32 on CPU.
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def compute_dtype_name(mode: str, name: str, cuda: bool) -> str:
    """The dtype a run of `mode` computed in, by name: model.compute_dtype, with "auto" resolved as
    `load_base_model` resolves it on a CUDA device (`cuda`) or the CPU."""
    if name != "auto":
        return name
    return "bfloat16" if cuda and mode != "fft" else "float32"


def load_base_model(
    path: str,
    mode: str,
    device: torch.device,
    *,
    compute_dtype: torch.dtype | None = None,
    double_quant: bool = True,
    quant_type: str = "nf4",
    gradient_checkpointing: bool = False,
):
    """Load the base model for ``mode`` on ``device``.

    - qlora: NF4 4-bit (double quant), compute bf16 on CUDA / fp32 on CPU unless ``compute_dtype``;
      placed by ``device_map`` and prepared with ``prepare_model_for_kbit_training`` (all base params
      frozen, non-4-bit params upcast to fp32). Never call ``.to()`` on it afterwards.
    - lora: full-precision frozen base (``compute_dtype`` or bf16 on CUDA / fp32 on CPU).
    - fft: every parameter trainable, fp32 weights unless ``compute_dtype`` is given (bf16 weights
      lose small updates; mixed precision is the trainer's decision via autocast).
    Returned in eval mode as ``from_pretrained`` leaves it; the trainer calls ``.train()``.
    """
    _check_mode(mode)
    from transformers import AutoModelForSeq2SeqLM

    device = torch.device(device)
    gc_kwargs = {"use_reentrant": False}
    if mode == "qlora":
        ok, reason = bitsandbytes_available(device)
        if not ok:
            raise RuntimeError(f"qlora needs bitsandbytes: {reason}")
        from peft import prepare_model_for_kbit_training
        from transformers import BitsAndBytesConfig

        cdtype = compute_dtype or _default_dtype(device)
        quant = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type=quant_type,
            bnb_4bit_use_double_quant=double_quant, bnb_4bit_compute_dtype=cdtype,
        )
        model = AutoModelForSeq2SeqLM.from_pretrained(
            path, quantization_config=quant, device_map={"": device}, dtype=cdtype,
        )
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=gradient_checkpointing,
            gradient_checkpointing_kwargs=gc_kwargs,
        )
        make_4bit_cpu_exact(model)
        return model

    dtype = compute_dtype or (_default_dtype(device) if mode == "lora" else torch.float32)
    model = AutoModelForSeq2SeqLM.from_pretrained(path, dtype=dtype).to(device)
    for param in model.parameters():
        param.requires_grad = mode == "fft"
    if gradient_checkpointing:
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x name
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=gc_kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gc_kwargs)
    return model


def is_4bit(model) -> bool:
    """True for a bitsandbytes 4-bit model (the one kind that must never be ``.to()``-moved)."""
    return bool(getattr(model, "is_loaded_in_4bit", False))
