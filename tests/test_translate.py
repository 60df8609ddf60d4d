"""`hql-ray translate`: AMR 3.0 release -> amr3 corpus with a tiny NLLB on Ray Data (shared local Ray)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import penman
import pytest

from hql_ray import cli
from hql_ray.data.amr import linearize
from hql_ray.prep.translate import read_release

REPO = Path(__file__).resolve().parent.parent
SIZES = {"training": ("train", 12), "dev": ("validation", 4), "test": ("test", 4)}
TREE = "code,level0,language\ndeu_Latn,root,German\nltz_Latn,root,Luxembourgish\neng_Latn,root,English\n"


def gold_pairs(split: str, n: int) -> list[tuple[str, str]]:
    path = REPO / "data/sample/amr3/eng_Latn" / f"amr3_eng_Latn_{split}.tsv"
    return [tuple(line.split("\t")) for line in path.read_text(encoding="utf-8").splitlines()[:n]]


def write_release(root: Path, bad: str | None = None) -> Path:
    """The AMR 3.0 layout (data/amrs/split/<folder>/*.txt, multi-line PENMAN with `# ::snt`) from the sample."""
    for folder, (split, n) in SIZES.items():
        blocks = ["# AMR release; LDC2020T02 (a header block: comments only)"]
        for i, (amr, snt) in enumerate(gold_pairs(split, n)):
            blocks.append(f"# ::id s.{folder}.{i} ::date 2020-01-01\n# ::snt {snt}\n"
                          + penman.encode(penman.decode(amr), indent=6))
        if bad and folder == "training":
            blocks.insert(3, bad)
        target = root / "data/amrs/split" / folder / f"amr-release-3.0-amrs-{folder}-sample.txt"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("\n\n".join(blocks) + "\n", encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    return write_release(tmp_path_factory.mktemp("release"))


@pytest.fixture(scope="module")
def tiny_nllb(tmp_path_factory) -> str:
    from hql_ray.prep.tiny_nllb import build_tiny_nllb

    return build_tiny_nllb(tmp_path_factory.mktemp("models"))


def translate_args(release, out, model, *extra) -> list[str]:
    return ["translate", str(release), "--langs", "deu_Latn,ltz_Latn,eng_Latn", "--model", model, "-o", str(out),
            "--max-new-tokens", "12", "--shard-size", "5", "--batch-size", "4", *extra]


def expected_outputs(model: str, lang: str, sentences: list[str]) -> list[str]:
    """The plain in-process generation of the same model: what every row must hold."""
    import numpy as np

    from hql_ray.prep.seq2seq_actor import Seq2SeqPredictor

    actor = Seq2SeqPredictor({"model": model, "src_lang": "eng_Latn", "lang_tokens": {lang: lang},
                              "max_new_tokens": 12})
    n = len(sentences)
    out = actor({"shard": np.array(["x"] * n), "idx": np.arange(n), "text": np.array(sentences, dtype=object),
                 "lang": np.array([lang] * n)})
    return list(out["output"])


# ---- reading the release and bad input (no Ray) ------------------------------------------------
def test_read_release_pairs_each_graph_with_its_sentence(release):
    splits, skipped = read_release(release)
    assert skipped == []
    assert {s: len(e) for s, e in splits.items()} == {"train": 12, "validation": 4, "test": 4}
    gold = gold_pairs("validation", 4)
    assert [(e.amr, e.snt) for e in splits["validation"]] == [(linearize(a), s) for a, s in gold]
    assert splits["train"][0].origin.endswith("amr-release-3.0-amrs-training-sample.txt:3")


def test_bad_graph_and_missing_snt_are_named_or_skipped(tmp_path):
    root = write_release(tmp_path / "r1", bad="# ::id broken\n# ::snt A broken graph.\n(w / want-01\n   :ARG0 (b / boy)")
    with pytest.raises(Exception) as err:
        read_release(root)
    assert "training-sample.txt:" in str(err.value) and "malformed AMR" in str(err.value)
    splits, skipped = read_release(root, skip_bad=True)
    assert len(splits["train"]) == 12 and len(skipped) == 1 and "malformed AMR" in skipped[0]

    root = write_release(tmp_path / "r2", bad="# ::id no-sentence\n(b / boy)")
    with pytest.raises(Exception, match=r"training-sample\.txt:\d+: graph without a `# ::snt` sentence"):
        read_release(root)
    rc = cli.main(translate_args(root, tmp_path / "o2", "tiny"))
    assert rc == 2 and not (tmp_path / "o2").exists()  # checked before anything is written


def test_unknown_language_codes_are_listed_before_any_work(release, tiny_nllb, tmp_path, capsys):
    out = tmp_path / "out"
    rc = cli.main(["translate", str(release), "--langs", "deu_Latn,xyz_Latn,qqq_Latn", "--model", tiny_nllb,
                   "-o", str(out)])
    assert rc == 2
    err = capsys.readouterr().err
    assert "no language token for: xyz_Latn, qqq_Latn" in err
    assert not (out / ".hql-ray").exists()
    assert cli.main(["translate", str(release), "--langs", "German", "-o", str(out)]) == 2
    assert "not a FLORES-200 language code: German" in capsys.readouterr().err


# ---- end to end on the shared Ray --------------------------------------------------------------
def test_translate_end_to_end_then_rerun_reuses_every_shard(ray_session, release, tiny_nllb, tmp_path, capsys):
    out = tmp_path / "data"
    assert cli.main(translate_args(release, out, tiny_nllb, "--actors", "1")) == 0
    summary = json.loads((out / ".hql-ray/translate/summary.json").read_text())
    # 12 + 4 + 4 sentences in shards of 5: 3 + 1 + 1 per language, 2 languages.
    assert summary["shards_written"] == 10 and summary["shards_reused"] == 0
    assert summary["sentences_generated"] == 40 and summary["tokens_generated"] > 0
    splits, _ = read_release(release)
    for code in ("deu_Latn", "ltz_Latn"):
        lang = summary["languages"][code]
        assert lang["sentences"] == 20 and 0 < lang["truncated"] < 20  # the tiny model stops at EOS or not
        for split, entries in splits.items():
            ours = out / "amr3" / code / f"amr3_{code}_{split}.tsv"
            original = out / "GoldAMR_SilverText/data/amr3" / code / f"amr3_{code}_{split}.tsv"
            assert ours.read_bytes() == original.read_bytes()
            lines = [line.split("\t") for line in ours.read_text(encoding="utf-8").splitlines()]
            want = expected_outputs(tiny_nllb, code, [e.snt for e in entries])
            assert lines == [[e.amr, w] for e, w in zip(entries, want) if w]  # graph i with translation i
            assert len(lines) >= len(entries) - lang.get("empty", 0)
    gold = (out / "GoldAMR_GoldText/data/amr3/eng_Latn/amr3_eng_Latn_test.tsv").read_text().splitlines()
    assert gold == [f"{e.amr}\t{e.snt}" for e in splits["test"]]

    tree = tmp_path / "tree.csv"
    tree.write_text(TREE)
    assert cli.main(["data", str(out), "-lf", str(tree)]) == 0
    assert "no problems" in capsys.readouterr().out

    before = {p: p.read_bytes() for p in (out / "amr3").rglob("*.tsv")}
    assert cli.main(translate_args(release, out, tiny_nllb, "--actors", "1")) == 0
    again = json.loads((out / ".hql-ray/translate/summary.json").read_text())
    assert again["shards_written"] == 0 and again["shards_reused"] == 10
    assert {p: p.read_bytes() for p in (out / "amr3").rglob("*.tsv")} == before

    # Another run's settings into the same folder: refused, nothing touched.
    assert cli.main(translate_args(release, out, tiny_nllb, "--num-beams", "2")) == 2
    assert "shards of a different run (num_beams: 1 there, 2 now)" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in (out / "amr3").rglob("*.tsv")} == before


@pytest.mark.slow  # a second driver process: its imports and Ray connection alone take ~30 s on 2 cores
def test_killed_run_resumes_without_redoing_finished_shards(ray_session, release, tiny_nllb, tmp_path):
    out = tmp_path / "data"
    env = {**os.environ, "HQL_RAY_TEST_KILL_AFTER_SHARDS": "3", "PYTHONPATH": str(REPO)}
    address = ray_session.get_runtime_context().gcs_address
    proc = subprocess.run([sys.executable, "-m", "hql_ray", *translate_args(release, out, tiny_nllb, "--actors", "1",
                                                                            "--address", address)],
                          env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    shards = out / ".hql-ray/translate/shards"
    kept = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in shards.rglob("*.jsonl")}
    assert len(kept) == 3 and not (out / "amr3").exists()  # no corpus file looks finished
    (shards / "deu_Latn" / ".test-00000.jsonl.half").write_text('{"idx": 0')  # a write cut short

    assert cli.main(translate_args(release, out, tiny_nllb, "--actors", "1")) == 0
    summary = json.loads((out / ".hql-ray/translate/summary.json").read_text())
    assert summary["shards_reused"] == 3 and summary["shards_written"] == 7
    assert all((p.stat().st_mtime_ns, p.read_bytes()) == v for p, v in kept.items())
    assert not list(shards.rglob(".*"))
    entries = read_release(release)[0]["train"]
    lines = (out / "amr3/ltz_Latn/amr3_ltz_Latn_train.tsv").read_text(encoding="utf-8").splitlines()
    want = expected_outputs(tiny_nllb, "ltz_Latn", [e.snt for e in entries])
    assert lines == [f"{e.amr}\t{w}" for e, w in zip(entries, want) if w]
