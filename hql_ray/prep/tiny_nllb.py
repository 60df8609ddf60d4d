"""A tiny random NLLB-shaped translator (M2M100 architecture + NllbTokenizer), built with no download.

For the laptop set-up and the tests of `hql-ray translate` (`--model tiny`): the real code path of
facebook/nllb-200-* (the `eng_Latn` source prefix, the forced target-language first token, batched
greedy or beam generation) on a ~60k-parameter model. The tokenizer is NLLB's own class with a
character vocabulary and every FLORES-200 language code as a special token, so it knows exactly the
codes NLLB knows. Its outputs are random text: it exercises the pipeline, not translation quality.
"""

from __future__ import annotations

import os
import shutil
import string
import tempfile
from pathlib import Path

TINY_NLLB_DIR = "tiny-nllb-v1"  # bump when the config, vocabulary or seed changes
# Enough characters for the bundled sample's 12 Latin-script languages; anything else is <unk>.
CHARS = sorted(set(string.ascii_letters + string.digits + string.punctuation)
               | set("äöüßéèêëàâáçñíìîïóòôúùûœæåøÄÖÜÉÈÀÇÑ¿¡’“”–«»"))


def _vocab() -> dict[str, int]:
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "▁": 4}
    for ch in CHARS:
        vocab.setdefault(ch, len(vocab))
    return vocab


def tiny_tokenizer():
    from transformers import NllbTokenizer

    vocab = _vocab()

    # No merges: BPE falls back to single characters; language codes are added as special tokens.
    return NllbTokenizer(vocab=vocab, merges=[], src_lang="eng_Latn")


def tiny_model(n_text_tokens: int, vocab_size: int, seed: int = 0):
    """Random weights, shaped so that outputs differ from sentence to sentence (a large init; the
    default one collapses to one string for every input), end at EOS about half of the time, and
    never hold a special or language token: the head rows of every id but EOS past the characters
    are zero. So tests can tell one sentence's output from another's, and see both ends of a row."""
    import torch
    from transformers import M2M100Config, M2M100ForConditionalGeneration

    config = M2M100Config(
        vocab_size=vocab_size, d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=1024,
        pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2, dropout=0.0,
        init_std=0.5, tie_word_embeddings=False,
    )
    with torch.random.fork_rng(devices=[]):  # same weights in every process; caller's RNG untouched
        torch.manual_seed(seed)
        model = M2M100ForConditionalGeneration(config).eval()
    with torch.no_grad():
        head = model.lm_head.weight
        head[n_text_tokens:] = 0
        head[[0, 1, 3]] = 0  # <s>, <pad>, <unk>
        head[2] *= 1.5  # </s>
    return model


def build_tiny_nllb(cache_dir: Path) -> str:
    """Build once into cache_dir/tiny-nllb-v1 (atomic rename: concurrent builders are safe)."""
    final = Path(cache_dir) / TINY_NLLB_DIR
    if (final / "config.json").is_file():
        return str(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{TINY_NLLB_DIR}.", dir=final.parent))
    try:
        tok = tiny_tokenizer()
        tiny_model(len(_vocab()), len(tok)).save_pretrained(tmp, safe_serialization=True, is_main_process=True)
        tok.save_pretrained(tmp)
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return str(final)
