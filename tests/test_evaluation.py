"""Generation and scoring per language and test set with a tiny random MT5 (no download, CPU)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import sacrebleu
import torch
from transformers import ByT5Tokenizer, MT5Config, MT5ForConditionalGeneration

from lid_fixture import tiny_lid  # noqa: F401  (a fixture)
from hql_ray.scoring import metrics
from hql_ray.settings.config import make_config
from hql_ray.data.dataset import DataSettings
from hql_ray.scoring.evaluation import GenerationResult, evaluate_language, evaluate_node, generate

LETTERS = "abcdefghijklmnopqrstuvwxyz"
SOURCES = [
    "Translate to German: (w / want-01 :ARG0 (b / boy) :ARG1 (g / go-02 :ARG0 b))",
    "(a / alpha)",
    "x",
    "Translate to Tok_Pisin: (d / dog)",
    "hello there",
    "(b / beta :ARG0 (c / cat))",
]


@pytest.fixture(autouse=True)
def no_spbleu_model(monkeypatch, tmp_path):
    """An empty sacreBLEU cache: spBLEU is computed only where a test gives a model file."""
    monkeypatch.setattr(metrics.tokenizer_spm, "SACREBLEU_DIR", str(tmp_path / "sacrebleu"))


@pytest.fixture(scope="module")
def tok():
    return ByT5Tokenizer()


def _tiny_model(tok, letters_only: bool):
    torch.manual_seed(0)
    config = MT5Config(vocab_size=len(tok), d_model=64, d_kv=16, d_ff=128, num_layers=2,
                       num_decoder_layers=2, num_heads=4, decoder_start_token_id=0, pad_token_id=0,
                       eos_token_id=1, tie_word_embeddings=False)
    model = MT5ForConditionalGeneration(config)
    if letters_only:
        # A random model mostly emits EOS or special tokens (empty strings after decoding). Zeroing
        # every LM-head row but lowercase letters makes it write letters, never EOS, so outputs are
        # non-empty, differ by input and run to exactly max_new_tokens bytes.
        keep = torch.zeros(len(tok), dtype=torch.bool)
        keep[[ord(ch) + 3 for ch in LETTERS]] = True  # ByT5: byte b is token b + 3
        with torch.no_grad():
            model.lm_head.weight[~keep] = 0.0
    return model


@pytest.fixture(scope="module")
def model(tok):
    return _tiny_model(tok, letters_only=True)


def test_outputs_come_back_in_input_order(model, tok):
    result = generate(model, tok, SOURCES, batch_size=4, max_new_tokens=8)
    assert isinstance(result, GenerationResult)
    assert len(result.outputs) == len(SOURCES) == len(result.clipped)
    one_by_one = [generate(model, tok, [s], max_new_tokens=8).outputs[0] for s in SOURCES]
    assert result.outputs == one_by_one
    assert len(set(result.outputs)) > 1  # the order check means something only if outputs differ
    assert all(o and set(o) <= set(LETTERS) for o in result.outputs)


def test_batch_size_does_not_change_outputs(model, tok):
    one = generate(model, tok, SOURCES, batch_size=1, max_new_tokens=8)
    four = generate(model, tok, SOURCES, batch_size=4, max_new_tokens=8)
    assert one.outputs == four.outputs
    assert one.clipped == four.clipped == [False] * len(SOURCES)


def test_long_sources_are_truncated_and_flagged(model, tok):
    limit = 12  # ByT5: bytes + EOS, so sources of 12+ bytes are clipped
    result = generate(model, tok, SOURCES, max_new_tokens=4, max_source_length=limit)
    assert result.clipped == [len(s.encode()) + 1 > limit for s in SOURCES]
    assert result.clipped == [True, False, False, True, False, True]
    # A clipped source generates exactly what its first limit-1 bytes (+ EOS) generate.
    prefix = SOURCES[0].encode()[: limit - 1].decode()
    assert result.outputs[0] == generate(model, tok, [prefix], max_new_tokens=4).outputs[0]


def test_max_new_tokens_bounds_output_length(model, tok):
    for n in (1, 5, 9):
        outputs = generate(model, tok, SOURCES, max_new_tokens=n).outputs
        assert [len(o.encode()) for o in outputs] == [n] * len(SOURCES)  # letters only: never EOS


def test_generation_leaves_training_mode_and_grads_alone(tok):
    model = _tiny_model(tok, letters_only=False)
    model.train()
    progress = []
    result = generate(model, tok, SOURCES, batch_size=4, max_new_tokens=3, device="cpu",
                      on_batch=lambda done, total: progress.append((done, total)))
    assert model.training
    assert all(p.grad is None for p in model.parameters())
    assert progress == [(4, 6), (6, 6)]
    assert all(isinstance(o, str) and o == o.strip() for o in result.outputs)
    assert generate(model, tok, []) == GenerationResult(outputs=[], clipped=[])


def test_bad_generation_settings_are_refused(model, tok):
    with pytest.raises(ValueError, match="batch_size"):
        generate(model, tok, SOURCES, batch_size=0)


def test_evaluate_language_amr2text(model, tok):
    refs = [f"reference sentence {i}" for i in range(len(SOURCES))]
    scores, texts = evaluate_language(model, tok, SOURCES, refs, max_new_tokens=6, max_source_length=12)
    assert texts.sources == SOURCES and texts.references == refs and len(texts.hypotheses) == len(SOURCES)
    record = scores.to_json()  # as the manifest keeps it
    assert json.loads(json.dumps(record)) == record
    assert record["n"] == len(SOURCES)
    assert record["clipped"] == 3
    for key in ("bleu_13a", "chrf++"):
        assert math.isfinite(record[key]) and 0.0 <= record[key] <= 100.0
    assert record["spbleu"] is None and record["lid"] is None  # no SentencePiece or LID model given
    assert set(record["not_computed"]) == {"spbleu", "lid", "lid_diff"}
    assert record["signatures"]["bleu_13a"].startswith("nrefs:1|") and "texts" not in record
    assert len(record["samples"]) == 3
    assert record["samples"][0]["source"] == SOURCES[0]
    assert record["samples"][0]["reference"] == refs[0]
    assert len(record["samples"][0]["hypothesis"]) == 6


def test_evaluate_language_text2amr_scores_invalid_graphs_as_empty(model, tok):
    gold = ["(a / alpha :ARG0 (b / beta))"] * len(SOURCES)
    record = evaluate_language(model, tok, SOURCES, gold, direction="text2amr", max_new_tokens=4)[0].to_json()
    assert json.loads(json.dumps(record)) == record
    assert record["n"] == len(SOURCES)
    assert record["valid_share"] == 0.0  # a letters-only model never writes a graph
    assert (record["match"], record["test"], record["gold"]) == (0, 0, 4 * len(SOURCES))
    assert (record["precision"], record["recall"], record["f1"]) == (0.0, 0.0, 0.0)
    assert record["clipped"] == 0 and len(record["samples"]) == 3


def test_evaluate_language_checks_its_inputs(model, tok):
    with pytest.raises(ValueError, match="direction"):
        evaluate_language(model, tok, SOURCES, SOURCES, direction="text2text")
    with pytest.raises(ValueError, match="6 sources but 5 references"):
        evaluate_language(model, tok, SOURCES, SOURCES[:5])


# ---- a node's languages on their test sets ----------------------------------------------------------
SAMPLE = Path(__file__).resolve().parent.parent / "data" / "sample"
LDC_GRAPHS = ["(b / boy)", "(c / cat :mod (w / white))", "(r / run-02 :ARG0 (d / dog))"]
LDC_DEU = ["Der Junge.", "Die weiße Katze.", "Der Hund läuft."]


@pytest.fixture(scope="module")
def eval_data(tmp_path_factory) -> Path:
    """The bundled sample (flores + amr3) for three languages, and an LDC2020T07 test set for German only."""
    root = tmp_path_factory.mktemp("eval_data")
    for corpus in ("amr3", "flores"):
        for code in ("deu_Latn", "ita_Latn", "nld_Latn"):
            shutil.copytree(SAMPLE / corpus / code, root / corpus / code)
    ldc = root / "ldc2020t07"
    (ldc / "graph_amr").mkdir(parents=True)
    (ldc / "graph_amr" / "graph_amr-test.txt").write_text("\n".join(LDC_GRAPHS) + "\n")
    (ldc / "deu_Latn").mkdir()
    (ldc / "deu_Latn" / "deu_Latn-test.txt").write_text("\n".join(LDC_DEU) + "\n")
    return root


def _test_lines(data: Path, corpus: str, code: str) -> list[str]:
    path = data / corpus / code / f"{corpus}_{code}_test.tsv"
    return [line.split("\t")[1] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _node_cfg(tmp_path, data, **values):
    overrides = {"run.output_dir": tmp_path / "runs", "run.name": "r", "data.dir": data,
                 "data.cache_dir": tmp_path / "cache", "eval.max_new_tokens": 5, "eval.batch_size": 8,
                 "data.max_test_per_language": 4, **values}  # 4 of each test set: fast on a shared CPU
    return make_config(overrides=[f"{k}={v}" for k, v in overrides.items()])


LANGS = [("deu_Latn", "German"), ("ita_Latn", "Italian"), ("nld_Latn", "Dutch")]


def as_json(languages) -> dict:
    """A node's scores as the manifest keeps them."""
    return {code: {name: s.to_json() for name, s in sets.items()} for code, sets in languages.items()}


def test_evaluate_node_scores_each_test_set_apart(model, tok, tmp_path, eval_data, tiny_lid):
    baseline = tmp_path / "global_evaluations.json"  # the original's -ge file: its values are used as given
    baseline.write_text(json.dumps({"flores": {"lid": {"deu_Latn": 42.0}}, "ldc2020t07": {"lid": {}}}))
    cfg = _node_cfg(tmp_path, eval_data, **{"eval.lid_model": tiny_lid, "eval.lid_baseline": baseline})
    out = as_json(evaluate_node(model, tok, cfg, DataSettings.from_config(cfg), LANGS, cfg.cache_dir, "cpu"))
    assert json.loads(json.dumps(out)) == out
    assert {code: list(sets) for code, sets in out.items()} == {
        "deu_Latn": ["flores", "ldc2020t07"], "ita_Latn": ["flores"], "nld_Latn": ["flores"]}  # never amr3 by default
    assert out["deu_Latn"]["flores"]["n"] == 4 and len(_test_lines(eval_data, "flores", "deu_Latn")) == 10
    ldc = out["deu_Latn"]["ldc2020t07"]
    assert ldc["n"] == 3 and ldc["samples"][1] == {
        "source": "Translate to German: (c / cat :mod (w / white))", "hypothesis": ldc["samples"][1]["hypothesis"],
        "reference": "Die weiße Katze."}
    flores = out["deu_Latn"]["flores"]
    assert flores["reference_lid"] == 42.0 and flores["reference_lid_source"] == "eval.lid_baseline"
    assert flores["lid_diff"] == pytest.approx(flores["lid"] - 42.0)
    assert ldc["reference_lid_source"] == "computed" and ldc["reference_lid"] > 50.0  # German references
    ita = out["ita_Latn"]["flores"]
    assert ita["reference_lid_source"] == "computed" and ita["reference_lid"] > 80.0
    assert 0.0 <= ita["lid"] < 50.0  # a random letters-only model writes no Italian
    for sets in out.values():
        for record in sets.values():
            assert set(record["not_computed"]) == {"spbleu"} and record["spbleu"] is None
            assert "texts" not in record  # no node id: no files
    with_amr3 = _node_cfg(tmp_path, eval_data, **{"eval.test_sets": "[amr3]"})
    out = as_json(evaluate_node(model, tok, with_amr3, DataSettings.from_config(with_amr3), LANGS[:1],
                                with_amr3.cache_dir, "cpu"))
    assert list(out["deu_Latn"]) == ["amr3"] and out["deu_Latn"]["amr3"]["n"] == 4


def test_kept_texts_reproduce_the_scores(model, tok, tmp_path, eval_data, tiny_lid):
    """The node's texts are line-aligned files under the run folder plus the original's per-node JSON, and
    sacreBLEU run on the files gives the scores in the record."""
    spm_model = tmp_path / "spm"
    import sentencepiece as spm

    spm.SentencePieceTrainer.train(sentence_iterator=iter(_test_lines(eval_data, "flores", "deu_Latn") * 5),
                                   model_prefix=str(spm_model), vocab_size=50, minloglevel=2)
    cfg = _node_cfg(tmp_path, eval_data, **{"eval.lid_model": tiny_lid, "eval.spbleu_model": f"{spm_model}.model"})
    out = as_json(evaluate_node(model, tok, cfg, DataSettings.from_config(cfg), LANGS[:2], cfg.cache_dir, "cpu",
                                node_id="level1.Germanic"))
    run = cfg.run_dir
    for code, sets in out.items():
        original = json.loads((run / "evaluation" / "level1.Germanic" / f"{code}.json").read_text(encoding="utf-8"))
        assert list(original) == list(sets)
        for test_set, record in sets.items():
            folder = run / record["texts"]["dir"]
            assert folder == run / "evaluation" / "level1.Germanic" / code / test_set
            src, hyp, ref = ((folder / f"{name}.txt").read_text(encoding="utf-8").splitlines()
                             for name in ("source", "hypothesis", "reference"))
            assert len(src) == len(hyp) == len(ref) == record["n"]
            if test_set == "flores":
                assert set(ref) <= set(_test_lines(eval_data, "flores", code))
            assert sacrebleu.corpus_bleu(hyp, [ref]).score == pytest.approx(record["bleu_13a"], abs=1e-9)
            assert sacrebleu.corpus_chrf(hyp, [ref], word_order=2).score == pytest.approx(record["chrf++"], abs=1e-9)
            assert metrics.spbleu(hyp, ref, f"{spm_model}.model").score == pytest.approx(record["spbleu"], abs=1e-9)
            assert list(original[test_set]) == ["old_bleu", "bleu", "chrf++", "lid", "lid_diff", "predictions",
                                                "references"]
            assert original[test_set]["bleu"] == record["spbleu"] and original[test_set]["old_bleu"] == record["bleu_13a"]
            assert original[test_set]["predictions"] == hyp and original[test_set]["references"] == ref


def test_a_failing_test_set_is_recorded_not_raised(model, tok, tmp_path, eval_data, monkeypatch):
    from hql_ray.scoring import evaluation

    cfg = _node_cfg(tmp_path, eval_data)

    def broken(*args, **kwargs):
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(evaluation, "evaluate_language", broken)
    out = as_json(evaluate_node(model, tok, cfg, DataSettings.from_config(cfg), LANGS[:1], cfg.cache_dir, "cpu"))
    record = out["deu_Latn"]["flores"]
    assert record["n"] == 4 and record["chrf++"] is None
    assert record["not_computed"]["chrf++"] == "evaluation failed: RuntimeError: CUDA out of memory"


def test_an_unreadable_test_set_costs_only_its_own_scores(model, tok, tmp_path, eval_data):
    broken = tmp_path / "broken_data"
    shutil.copytree(eval_data, broken)
    (broken / "ldc2020t07" / "deu_Latn" / "deu_Latn-test.txt").write_text("only one line\n")  # 3 graphs, 1 sentence
    cfg = _node_cfg(tmp_path, broken)
    out = as_json(evaluate_node(model, tok, cfg, DataSettings.from_config(cfg), LANGS[:1], cfg.cache_dir, "cpu"))
    assert out["deu_Latn"]["flores"]["n"] == 4 and out["deu_Latn"]["flores"]["chrf++"] is not None
    why = out["deu_Latn"]["ldc2020t07"]["not_computed"]["chrf++"]
    assert why.startswith("test set not readable: InputError: ") and "3 graphs" in why
