"""LID as the original's compute_lid, with a tiny fastText model trained here on the bundled sample."""

from __future__ import annotations

import json

import fasttext
import pytest

from lid_fixture import sample_sentences, tiny_lid  # noqa: F401  (a fixture)
from hql_ray.scoring import metrics
from hql_ray.settings.config import make_config
from hql_ray.scoring.metrics import NotComputed, lid_score, load_lid_model, text_scores


def original_compute_lid(model, predictions, code):
    """The original train.py's compute_lid, verbatim but for the model argument."""
    predictions_lids = model.predict(predictions, k=3000)
    predictions_lang_indexes = [langs.index(f'__label__{code}') for langs in predictions_lids[0]]
    predictions_scores = [predictions_lids[1][i][index] for i, index in enumerate(predictions_lang_indexes)]
    average_lid = sum(predictions_scores) / len(predictions_scores)
    return average_lid * 100


@pytest.mark.parametrize("code,other", [("deu_Latn", "ita_Latn"), ("nld_Latn", "tpi_Latn"), ("ita_Latn", "deu_Latn")])
def test_a_language_scores_high_for_itself_and_low_for_another(tiny_lid, code, other):
    model, labels = load_lid_model(str(tiny_lid))
    assert len(labels) == 12 and f"__label__{code}" in labels
    texts = sample_sentences(code, "test")  # not seen in training
    own = lid_score(model, texts, code, labels)
    assert own > 80.0
    assert lid_score(model, texts, other, labels) < 10.0
    assert own == pytest.approx(original_compute_lid(fasttext.load_model(str(tiny_lid)), texts, code), abs=1e-4)


def test_lid_edge_cases(tiny_lid):
    model, labels = load_lid_model(str(tiny_lid))
    assert load_lid_model(str(tiny_lid))[0] is model  # loaded once per process
    with pytest.raises(NotComputed, match="no label __label__xho_Latn"):
        lid_score(model, ["Sawubona"], "xho_Latn", labels)
    with pytest.raises(ValueError, match="no texts"):
        lid_score(model, [], "deu_Latn", labels)
    one = sample_sentences("deu_Latn", "test")[0]
    # fastText reads one line per text: a text with newlines is identified as one line, not refused
    assert lid_score(model, [one.replace(" ", "\n", 1)], "deu_Latn", labels) == pytest.approx(
        lid_score(model, [one], "deu_Latn", labels), abs=1e-6)


def test_text_scores_lid_and_lid_diff(tiny_lid):
    refs = sample_sentences("deu_Latn", "test")
    wrong_language = sample_sentences("ita_Latn", "test")
    scores = text_scores(wrong_language, refs, code="deu_Latn", lid_model=str(tiny_lid))
    model, labels = load_lid_model(str(tiny_lid))
    ref_lid = lid_score(model, refs, "deu_Latn", labels)
    assert scores["reference_lid"] == pytest.approx(ref_lid)
    assert scores["lid"] < 10.0 and scores["lid_diff"] == pytest.approx(scores["lid"] - ref_lid)
    assert scores["lid_diff"] < -70.0
    assert scores["signatures"]["lid"] == f"fasttext|model:{tiny_lid}|labels:12|k:all|mean_prob_x100"
    assert "lid" not in scores["not_computed"]
    # the references' LID from a baseline file (the original's -ge values) is used as given
    given = text_scores(refs, refs, code="deu_Latn", lid_model=str(tiny_lid), reference_lid=50.0)
    assert given["reference_lid"] == 50.0 and given["lid_diff"] == pytest.approx(given["lid"] - 50.0)
    missing = text_scores(refs, refs, code="xho_Latn", lid_model=str(tiny_lid))
    assert missing["lid"] is None and missing["not_computed"]["lid_diff"] == "the LID model has no label __label__xho_Latn"
    assert json.loads(json.dumps(scores)) == scores


def test_check_eval_files_accepts_a_fasttext_model(tiny_lid, tmp_path):
    cfg = make_config(overrides=[f"eval.lid_model={tiny_lid}", f"eval.lid_baseline={tmp_path / 'ge.json'}"])
    notes = metrics.check_eval_files(cfg)
    assert not any(n.startswith("LID") for n in notes)
    assert any("does not exist yet: the references' LID is computed by the workers" in n for n in notes)


def test_an_hf_model_that_cannot_be_fetched_is_not_computed(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    scores = text_scores(["a"], ["b"], code="deu_Latn", lid_model="hf://nobody-here/no-such-repo/model.bin")
    assert scores["lid"] is None
    assert scores["not_computed"]["lid"].startswith("cannot fetch LID model hf://nobody-here/no-such-repo/model.bin")
