"""Prompts, the per-language Arrow cache (built once, reused by parent and child), batching."""

from __future__ import annotations

import os

import pytest
from transformers import ByT5Tokenizer

from hql_ray.data import batching as B
from hql_ray.data import dataset as D


@pytest.fixture()
def corpus_dir(tmp_path):
    """Two corpora, two languages, in the original's layout."""
    lines = {
        "deu_Latn": ["(s / see-01 :ARG0 (b / boy) :ARG1 (c / cat))\tDer Junge sieht die Katze.",
                     "(r / run-02 :ARG0 (g / girl))\tDas Mädchen rennt.",
                     "(e / eat-01 :ARG0 (d / dog))\tDer Hund isst."],
        "nld_Latn": ["(s / see-01 :ARG0 (b / boy) :ARG1 (c / cat))\tDe jongen ziet de kat.",
                     "(r / run-02 :ARG0 (g / girl))\tHet meisje rent."],
    }
    for corpus in ("amr3", "flores"):
        for code, rows in lines.items():
            for split in ("train", "validation", "test"):
                d = tmp_path / corpus / code
                d.mkdir(parents=True, exist_ok=True)
                (d / f"{corpus}_{code}_{split}.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return tmp_path


def settings(data_dir, **kw):
    return D.DataSettings(data_dir=str(data_dir), **kw)


def test_prompt_format_is_the_originals():
    src, tgt = D.make_pair("amr2text", "Tok_Pisin", "(b / boy)", "boi")
    assert (src, tgt) == ("Translate to Tok_Pisin: (b / boy)", "boi")
    src, tgt = D.make_pair("text2amr", "German", "(b / boy)", "Junge")
    assert (src, tgt) == ("Parse from German: Junge", "(b / boy)")


def test_language_dataset_tokenizes_union_of_corpora(corpus_dir, tmp_path):
    tok = ByT5Tokenizer()
    ds = D.language_dataset(settings(corpus_dir), "deu_Latn", "German", "train", tok, tmp_path / "cache")
    assert len(ds) == 6  # 3 lines x 2 corpora
    assert ds[0]["source"].startswith("Translate to German: (")
    assert ds[0]["input_ids"] == tok(ds[0]["source"])["input_ids"]
    assert ds[0]["labels"][-1] == tok.eos_token_id
    assert set(ds["lang"]) == {"deu_Latn"}
    assert ds[0]["origin"].endswith(":1")


def test_cache_is_reused_and_invalidated(corpus_dir, tmp_path, monkeypatch):
    tok = ByT5Tokenizer()
    s = settings(corpus_dir)
    cache = tmp_path / "cache"
    calls = []
    real = D.tokenize_language
    monkeypatch.setattr(D, "tokenize_language", lambda *a, **k: calls.append(a[1:4]) or real(*a, **k))
    D.node_dataset(s, [("deu_Latn", "German"), ("nld_Latn", "Dutch")], "train", tok, cache)  # parent
    D.node_dataset(s, [("deu_Latn", "German")], "train", tok, cache)  # child: cache hit
    assert calls == [("deu_Latn", "German", "train"), ("nld_Latn", "Dutch", "train")]
    # A changed source file (new size/mtime) must not reuse the stale cache.
    f = corpus_dir / "amr3" / "deu_Latn" / "amr3_deu_Latn_train.tsv"
    f.write_text(f.read_text() + "(x / xylophone)\tXylophon.\n")
    os.utime(f, ns=(1, 1))
    ds = D.node_dataset(s, [("deu_Latn", "German")], "train", tok, cache)
    assert len(ds) == 7 and calls[-1] == ("deu_Latn", "German", "train")
    # Other settings (direction, max lengths) get their own entry.
    D.language_dataset(settings(corpus_dir, direction="text2amr"), "deu_Latn", "German", "train", tok, cache)
    assert len(calls) == 4


def test_node_union_and_cap_per_corpus(corpus_dir, tmp_path):
    tok = ByT5Tokenizer()
    s = settings(corpus_dir, caps={"train": 2})
    ds = D.node_dataset(s, [("deu_Latn", "German"), ("nld_Latn", "Dutch")], "train", tok, tmp_path / "c")
    # 2 from each corpus of each language: deu has 3 lines per corpus, nld 2
    assert sorted(ds["lang"]) == ["deu_Latn"] * 4 + ["nld_Latn"] * 4
    corpora = [o.split("/")[-3] for o in ds["origin"]]
    assert corpora.count("amr3") == 4 and corpora.count("flores") == 4
    # the same seeded rows in every language and corpus (parallel data keeps the same graphs)
    deu = [o.rsplit(":", 1)[1] for o, l in zip(ds["origin"], ds["lang"]) if l == "deu_Latn"]
    assert deu[:2] == deu[2:]


def test_validation_first_rows_per_corpus_and_language(corpus_dir, tmp_path):
    """The original: each (corpus, language) gives its first validation_size // languages // corpora rows."""
    tok = ByT5Tokenizer()
    langs = [("deu_Latn", "German"), ("nld_Latn", "Dutch")]
    ds = D.node_dataset(settings(corpus_dir, validation_size=8), langs, "validation", tok, tmp_path / "c")
    # 8 // 2 languages // 2 corpora = 2: lines 1-2 of each file
    assert [(l, o.split("/")[-3], o.rsplit(":", 1)[1]) for l, o in zip(ds["lang"], ds["origin"])] == [
        ("deu_Latn", "amr3", "1"), ("deu_Latn", "amr3", "2"), ("deu_Latn", "flores", "1"), ("deu_Latn", "flores", "2"),
        ("nld_Latn", "amr3", "1"), ("nld_Latn", "amr3", "2"), ("nld_Latn", "flores", "1"), ("nld_Latn", "flores", "2")]
    # a leaf (one language) gets 8 // 1 // 2 = 4 per corpus: every deu row (3 per corpus)
    leaf = D.node_dataset(settings(corpus_dir, validation_size=8), langs[:1], "validation", tok, tmp_path / "c")
    assert len(leaf) == 6
    # sample: a seeded sample of caps["validation"] from the union of the corpora, whatever the node
    s = settings(corpus_dir, validation="sample", caps={"validation": 5})
    assert len(D.node_dataset(s, langs, "validation", tok, tmp_path / "c")) == 5 + 4


def test_test_set_dataset_per_test_set(corpus_dir, tmp_path):
    tok = ByT5Tokenizer()
    (corpus_dir / "ldc2020t07" / "graph_amr").mkdir(parents=True)
    (corpus_dir / "ldc2020t07" / "graph_amr" / "graph_amr-test.txt").write_text("(b / boy)\n(g / girl)\n")
    (corpus_dir / "ldc2020t07" / "deu_Latn").mkdir()
    (corpus_dir / "ldc2020t07" / "deu_Latn" / "deu_Latn-test.txt").write_text("Junge\nMädchen\n")
    s = settings(corpus_dir)
    flores = D.test_set_dataset(s, "deu_Latn", "German", "flores", tok, tmp_path / "c")
    assert len(flores) == 3 and {o.split("/")[-3] for o in flores["origin"]} == {"flores"}
    ldc = D.test_set_dataset(s, "deu_Latn", "German", "ldc2020t07", tok, tmp_path / "c")
    assert ldc["source"] == ["Translate to German: (b / boy)", "Translate to German: (g / girl)"]
    assert ldc["target"] == ["Junge", "Mädchen"] and ldc.column_names == flores.column_names
    assert D.test_set_dataset(s, "nld_Latn", "Dutch", "ldc2020t07", tok, tmp_path / "c") is None
    capped = D.test_set_dataset(settings(corpus_dir, caps={"test": 1}), "deu_Latn", "German", "amr3", tok,
                                tmp_path / "c")
    assert len(capped) == 1 and capped["origin"][0].split("/")[-3] == "amr3"


def test_truncation_to_max_source_length_counts_the_clipped(corpus_dir, tmp_path):
    tok = ByT5Tokenizer()
    ds = D.language_dataset(settings(corpus_dir, max_source_length=16), "deu_Latn", "German", "train",
                            tok, tmp_path / "c")
    assert max(len(x) for x in ds["input_ids"]) == 16
    assert all(x[-1] == tok.eos_token_id for x in ds["input_ids"])
    assert D.clipped_counts(ds) == {"source": 6, "target": 0}
    # targets over 19 tokens (bytes + EOS) are cut, once per corpus they appear in
    both = D.node_dataset(settings(corpus_dir, max_target_length=19), [("deu_Latn", "German"), ("nld_Latn", "Dutch")],
                          "train", tok, tmp_path / "c")
    lengths = {t: len(tok(text_target=t)["input_ids"]) for t in both["target"]}
    assert D.clipped_counts(both) == {"source": 0, "target": sum(2 for n in lengths.values() if n > 19)}
    # no limit (the default, as the original): nothing cut
    full = D.language_dataset(settings(corpus_dir), "deu_Latn", "German", "train", tok, tmp_path / "c")
    assert D.clipped_counts(full) == {"source": 0, "target": 0}
    assert max(len(x) for x in full["input_ids"]) > 40


def test_example_lengths_are_the_longer_side_after_select_and_shuffle(corpus_dir, tmp_path):
    ds = D.node_dataset(settings(corpus_dir), [("deu_Latn", "German"), ("nld_Latn", "Dutch")], "train",
                        ByT5Tokenizer(), tmp_path / "c")
    view = ds.select([7, 0, 3]).shuffle(seed=2)
    for part in (ds, view):
        assert D.example_lengths(part) == [max(len(r["input_ids"]), len(r["labels"])) for r in part]
    assert D.example_lengths(ds.select([])) == []


def test_a_tokenizer_saved_again_in_the_same_folder_gets_a_new_cache_key(corpus_dir, tmp_path):
    folder = tmp_path / "tok"
    ByT5Tokenizer().save_pretrained(folder)
    tok = ByT5Tokenizer.from_pretrained(folder)
    before = D.cache_key(settings(corpus_dir), "deu_Latn", "German", "train", tok)
    config = folder / "tokenizer_config.json"
    config.write_text(config.read_text() + " ")
    assert D.cache_key(settings(corpus_dir), "deu_Latn", "German", "train", tok) != before


def test_length_grouped_batches_cover_everything_once_and_cut_padding():
    import random

    rng = random.Random(1)
    lengths = [rng.randint(5, 300) for _ in range(2000)]
    grouped = B.length_grouped_batches(lengths, 8, seed=3)
    plain = B.length_grouped_batches(lengths, 8, seed=3, group=False)
    assert sorted(i for b in grouped for i in b) == list(range(2000))
    assert all(len(b) <= 8 for b in grouped)
    assert B.real_token_share(lengths, grouped) > 0.95
    assert B.real_token_share(lengths, plain) < 0.7
    assert grouped == B.length_grouped_batches(lengths, 8, seed=3)  # deterministic
    assert grouped != B.length_grouped_batches(lengths, 8, seed=4)  # a new order every epoch


def test_collate_pads_inputs_and_masks_labels():
    batch = B.collate([{"input_ids": [5, 6, 1], "labels": [7, 1]}, {"input_ids": [5, 1], "labels": [8, 9, 1]}], 0)
    assert batch["input_ids"].tolist() == [[5, 6, 1], [5, 1, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["labels"].tolist() == [[7, 1, -100], [8, 9, 1]]
