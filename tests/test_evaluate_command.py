"""The researcher's round trip (issue 26): a corpus folder of one's own trains and scores its test split with no
extra flag; `hql-ray fetch-eval-models` puts the spBLEU and LID models where runs read them (the downloads
replaced by local files: tests have no network), and `hql-ray evaluate RUN` scores the finished run again from
its kept texts, so spBLEU and LID appear in the manifest, results.md|csv and the model cards without retraining.
The new values are sacreBLEU's (and fastText's) on the kept files."""

from __future__ import annotations

import csv
import json
import logging
import shutil
from pathlib import Path

import pytest
import sacrebleu
import sentencepiece as spm

from conftest import tiny_overrides
from lid_fixture import tiny_lid  # noqa: F401  (a fixture)
from hql_ray.cli import main
from hql_ray.outputs.manifest import read_manifest
from hql_ray.outputs.model_card import CARD
from hql_ray.scoring import eval_models, metrics

TREE = "code,level0,language\ndeu_Latn,Top,German\nita_Latn,Top,Italian\n"
CORPUS = "qald9"  # named like the real one in ../shared/data/qald9-hql (a test never reads it)


def own_corpus(root: Path) -> Path:
    """A data folder holding one corpus of one's own (no amr3, no flores): the sample generator's amr3 text,
    under another name."""
    from make_sample import write_sample  # data/make_sample.py (conftest puts data/ on the path)

    sample = root / "sample"
    write_sample(sample, n_train=24, n_validation=6, n_test=5, n_flores_train=1, n_flores_validation=1,
                 n_flores_test=1)
    data = root / "my_data"
    for code in ("deu_Latn", "ita_Latn"):
        for split in ("train", "validation", "test"):
            target = data / CORPUS / code / f"{CORPUS}_{code}_{split}.tsv"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(sample / "amr3" / code / f"amr3_{code}_{split}.tsv", target)
    shutil.rmtree(sample)
    return data


@pytest.fixture(scope="module")
def own_run(ray_session, tmp_path_factory):
    """`hql-ray train` on the own corpus with no --corpus and no --test-sets (the tiny model, a few steps)."""
    root = tmp_path_factory.mktemp("own")
    data, tree = own_corpus(root), root / "tree.csv"
    tree.write_text(TREE)
    overrides = [o for o in tiny_overrides(root / "runs", data, tree, **{"resources.num_gpus": 0})
                 if not o.startswith(("data.dir=", "tree.levels="))]
    argv = ["train", "--data-dir", str(data), "-ln", "level0", "language", "-sn", "own", "--plain", *overrides]
    logger = logging.getLogger("hql_ray.orchestration.preflight")
    said: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: said.append(record.getMessage())
    logger.addHandler(handler)
    try:
        assert main(argv) == 0
    finally:
        logger.removeHandler(handler)
    return root / "runs" / "own", data, said


@pytest.fixture
def model_caches(monkeypatch, tmp_path):
    """Empty spBLEU (sacreBLEU) and Hugging Face caches of this test's own."""
    import huggingface_hub.constants

    monkeypatch.setattr(metrics.tokenizer_spm, "SACREBLEU_DIR", str(tmp_path / "sacrebleu"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    return tmp_path


def tiny_spm(folder: Path, sentences: list[str]) -> Path:
    """A SentencePiece model trained here (sacreBLEU's flores200 cannot be downloaded in a test)."""
    prefix = folder / "tiny_spm"
    spm.SentencePieceTrainer.train(sentence_iterator=iter(sentences * 20), model_prefix=str(prefix),
                                   vocab_size=40, hard_vocab_limit=False, minloglevel=2)
    return Path(f"{prefix}.model")


def offline_downloads(monkeypatch, spm_file: Path, lid_file: Path) -> list[str]:
    """fetch-eval-models' two downloads, served from local files into the places the real ones write (sacreBLEU's
    cache; the Hugging Face cache's layout, read back by huggingface_hub's own try_to_load_from_cache)."""
    import huggingface_hub.constants

    calls = []

    def download_url(url, dest, timeout=eval_models.TIMEOUT_S):
        calls.append(url)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(spm_file, dest)

    def hf_download(repo_id, filename, revision):
        calls.append(f"{repo_id}/{filename}")
        repo = Path(huggingface_hub.constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}"
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / "main").write_text("0" * 40)
        target = repo / "snapshots" / ("0" * 40) / filename
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(lid_file, target)
        return str(target)

    monkeypatch.setattr(eval_models, "download_url", download_url)
    monkeypatch.setattr(eval_models, "hf_download", hf_download)
    return calls


def kept_texts(run_dir: Path, record: dict) -> tuple[list[str], list[str]]:
    folder = run_dir / record["texts"]["dir"]
    return ((folder / "hypothesis.txt").read_text(encoding="utf-8").splitlines(),
            (folder / "reference.txt").read_text(encoding="utf-8").splitlines())


def test_an_own_corpus_trains_and_its_test_split_is_scored_without_flags(own_run, tmp_path):
    run_dir, data, said = own_run
    manifest = read_manifest(run_dir)
    assert manifest.data["config"]["data"]["corpora"] == [CORPUS]  # what it trained on, recorded
    assert manifest.data["config"]["eval"]["test_sets"] == [CORPUS]
    assert [s for s in said if s.startswith("data:")] == [
        f"data: no amr3 and flores corpora in {data}: training on every corpus there ({CORPUS}) and scoring their "
        f"test splits ({CORPUS}); --corpus and --test-sets choose others"]  # said once
    for code in ("deu_Latn", "ita_Latn"):
        scores = manifest.nodes[f"language.{'German' if code == 'deu_Latn' else 'Italian'}"].metrics.languages[code]
        assert list(scores) == [CORPUS] and scores[CORPUS].n == 5
        assert scores[CORPUS].chrf is not None
    rows = list(csv.DictReader((run_dir / "results.csv").open(encoding="utf-8")))
    assert [(r["code"], r["test_set"]) for r in rows] == [("deu_Latn", CORPUS), ("ita_Latn", CORPUS)]
    card = (run_dir / "final" / "deu_Latn" / CARD).read_text(encoding="utf-8")
    assert f"| {CORPUS} | 5 |" in card
    report = tmp_path / "report"  # the report's tables and plots have its rows too
    assert main(["report", str(run_dir), "--out", str(report)]) == 0
    assert (report / "plots" / f"scores_{CORPUS}.png").is_file()
    assert f"| deu_Latn | German | {CORPUS} |" in (report / "report.md").read_text(encoding="utf-8")
    # no model file for spBLEU or LID: each says how to get it, without retraining
    results = (run_dir / "results.md").read_text(encoding="utf-8")
    assert "- spBLEU: not computed: no flores200 SentencePiece model" in results
    assert "`hql-ray fetch-eval-models` downloads it; then `hql-ray evaluate RUN` scores a finished run again" in results


def assert_rescored(run_dir: Path, before: dict, lid_file: Path) -> int:
    """Every test set the run scored has, in the manifest, spBLEU, BLEU (13a), chrF++, LID and LID diff equal to
    sacreBLEU's and fastText's on its kept files (spBLEU: sacreBLEU's own flores200 tokenizer, which reads the model
    from sacreBLEU's cache), the rest of its record kept, and the original's per-node JSON says the same.
    -> the number of test sets checked."""
    after, checked = read_manifest(run_dir), 0
    model, labels = metrics.load_lid_model(str(lid_file))
    for node, entry in before["nodes"].items():
        for code, sets in ((entry.get("metrics") or {}).get("languages") or {}).items():
            for test_set, old in sets.items():
                new = after.nodes[node].metrics.languages[code][test_set]
                hyps, refs = kept_texts(run_dir, old)
                assert new.spbleu == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs], tokenize="flores200").score,
                                                   abs=1e-9)
                assert new.bleu_13a == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score, abs=1e-9)
                assert new.bleu_13a == pytest.approx(old["bleu_13a"], abs=1e-9)
                assert new.chrf == pytest.approx(sacrebleu.corpus_chrf(hyps, [refs], word_order=2).score, abs=1e-9)
                assert new.lid == pytest.approx(metrics.lid_score(model, hyps, code, labels), abs=1e-9)
                assert new.reference_lid == pytest.approx(metrics.lid_score(model, refs, code, labels), abs=1e-9)
                assert new.lid_diff == pytest.approx(new.lid - new.reference_lid, abs=1e-9)
                assert new.not_computed == {} and set(new.signatures) == {"spbleu", "bleu_13a", "chrf++", "lid"}
                assert new.n == old["n"] and [s.to_json() for s in new.samples] == old["samples"]  # kept
                original = json.loads((run_dir / "evaluation" / node / f"{code}.json").read_text(encoding="utf-8"))
                assert original[test_set]["bleu"] == new.spbleu and original[test_set]["lid"] == new.lid
                checked += 1
    return checked


def assert_tables_show_spbleu_and_lid(run_dir: Path) -> None:
    """results.md|csv and every model card show spBLEU and LID (the leaf's scores), nothing "not computed"."""
    after = read_manifest(run_dir)
    results = (run_dir / "results.md").read_text(encoding="utf-8")
    assert "| spBLEU | BLEU (13a) | chrF++ | LID | LID diff |" in results and "not computed" not in results
    for row in csv.DictReader((run_dir / "results.csv").open(encoding="utf-8")):
        new = after.nodes[row["node"]].metrics.languages[row["code"]][row["test_set"]]
        assert float(row["spbleu"]) == new.spbleu and float(row["lid"]) == new.lid and row["not_computed"] == ""
        card = (run_dir / "final" / row["code"] / CARD).read_text(encoding="utf-8")
        assert (f"| {row['test_set']} | {new.n} | {new.spbleu:.2f} | {new.bleu_13a:.2f} | {new.chrf:.2f} | "
                f"{new.lid:.2f} | {new.lid_diff:.2f} |") in card


def test_fetch_then_evaluate_adds_spbleu_and_lid_without_retraining(own_run, model_caches, monkeypatch, tiny_lid,
                                                                    capsys):
    run_dir, _, _ = own_run
    before = json.loads((run_dir / "manifest.json").read_text())
    adapters = {p: p.read_bytes() for p in sorted((run_dir / "final").rglob("*.safetensors"))}
    leaf = before["nodes"]["language.German"]["metrics"]["languages"]["deu_Latn"][CORPUS]
    hyps, refs = kept_texts(run_dir, leaf)
    calls = offline_downloads(monkeypatch, tiny_spm(model_caches, refs + hyps), tiny_lid)

    assert main(["fetch-eval-models"]) == 0
    assert calls == [eval_models.SPBLEU_URL, "cis-lmu/glotlid/model.bin"]
    assert metrics.sacrebleu_spm_path().is_file() and metrics.effective_lid_model(None) is not None
    assert main(["fetch-eval-models"]) == 0 and len(calls) == 2  # there already: nothing downloaded again
    capsys.readouterr()

    assert main(["evaluate", str(run_dir)]) == 0  # no flags: the caches fetch-eval-models filled
    out = capsys.readouterr().out
    assert "scored again: 2 test set(s) of 2 node(s)" in out and "and 2 model card(s)" in out
    assert assert_rescored(run_dir, before, tiny_lid) == 2
    assert_tables_show_spbleu_and_lid(run_dir)
    after = read_manifest(run_dir)
    new = after.nodes["language.German"].metrics.languages["deu_Latn"][CORPUS]
    assert new.reference_lid > 50.0 and new.reference_lid_source == "computed"  # German references
    assert {p: p.read_bytes() for p in adapters} == adapters  # nothing trained or exported again
    assert after.data["config"]["eval"]["lid_model"] is None  # (the caches: the signatures name the files)
    assert f"model:{metrics.effective_lid_model(None)}|" in new.signatures["lid"]


def test_evaluate_with_model_files_given(own_run, model_caches, tiny_lid, tmp_path):
    """--spbleu-model and --lid-model name the files; a file that is not there is refused before anything."""
    run_dir, _, _ = own_run
    leaf = read_manifest(run_dir).nodes["language.Italian"].metrics.languages["ita_Latn"][CORPUS]
    hyps, refs = kept_texts(run_dir, leaf.to_json())
    spm_file = tiny_spm(tmp_path, refs)
    assert main(["evaluate", str(run_dir), "--spbleu-model", str(spm_file), "--lid-model", str(tiny_lid)]) == 0
    new = read_manifest(run_dir).nodes["language.Italian"].metrics.languages["ita_Latn"][CORPUS]
    assert new.spbleu == pytest.approx(metrics.spbleu(hyps, refs, str(spm_file)).score, abs=1e-9)
    assert "tok:spm-vocab" in new.signatures["spbleu"] and new.lid is not None
    assert main(["evaluate", str(run_dir), "--spbleu-model", str(tmp_path / "nope.model")]) == 2


def test_fetch_without_a_network_says_what_to_do(model_caches, monkeypatch, capsys):
    """The real download functions, with nowhere to download from: each model's error says how to do without."""
    monkeypatch.setattr(eval_models, "SPBLEU_URL", "http://127.0.0.1:9/flores200sacrebleuspm")  # port 9: refused
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert main(["fetch-eval-models"]) == 2
    err = capsys.readouterr().err
    assert "cannot download the flores200 SentencePiece model from http://127.0.0.1:9/" in err
    assert f"copy it to {metrics.sacrebleu_spm_path()}, or give its path as eval.spbleu_model" in err
    assert "cannot download the LID model hf://cis-lmu/glotlid/model.bin" in err
    assert "give its path as eval.lid_model (hql-ray evaluate --lid-model FILE)" in err
    assert not metrics.sacrebleu_spm_path().exists()  # nothing half-written where sacreBLEU would load it
    assert list(metrics.sacrebleu_spm_path().parent.iterdir()) == []


def test_evaluate_refuses_a_running_run_and_says_what_it_cannot_score(own_run, tmp_path, capsys):
    run_dir, _, _ = own_run
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("storage", "nodes", "final", "tensorboard"))
    manifest = read_manifest(copy)
    manifest.set_run_status("running")
    assert main(["evaluate", str(copy)]) == 2
    assert "the run is running" in capsys.readouterr().err
    shutil.rmtree(copy / "evaluation" / "language.Italian")
    assert main(["evaluate", str(copy), "--force"]) == 0  # (the copy has no final/: no card)
    captured = capsys.readouterr()
    assert "scored again: 1 test set(s)" in captured.out
    assert (f"not scored again: language.Italian ita_Latn {CORPUS}: its texts (evaluation/language.Italian/ita_Latn/"
            f"{CORPUS}) are gone") in captured.err


@pytest.mark.slow  # the demo itself (21 nodes, its base pre-trained once): about 7 minutes on 2 idle cores
@pytest.mark.timeout(2400)  # (a busy machine triples that)
def test_a_finished_demo_run_rescored_shows_spbleu_and_lid(ray_session, model_caches, monkeypatch, tiny_lid,
                                                           tmp_path):
    out = tmp_path / "runs"
    assert main(["train", "--config", "configs/demo.yaml", f"run.output_dir={out}", "--plain"]) == 0
    run_dir = out / "demo"
    before = json.loads((run_dir / "manifest.json").read_text())
    assert "- spBLEU: not computed" in (run_dir / "results.md").read_text(encoding="utf-8")
    hyps, refs = kept_texts(run_dir, before["nodes"]["language.German"]["metrics"]["languages"]["deu_Latn"]["flores"])
    offline_downloads(monkeypatch, tiny_spm(tmp_path, refs + hyps), tiny_lid)
    assert main(["fetch-eval-models", "--only", "spbleu"]) == 0
    assert main(["evaluate", str(run_dir), "--lid-model", str(tiny_lid)]) == 0
    assert assert_rescored(run_dir, before, tiny_lid) == 2 * 12  # flores and amr3 at each of the 12 leaves
    assert_tables_show_spbleu_and_lid(run_dir)
