"""`hql-ray data`: counts, exact token-length percentiles, clipped counts, every problem listed, exit codes."""

from __future__ import annotations

from pathlib import Path

import pytest

from hql_ray.cli import main
from hql_ray.prep.datacheck import percentile, token_lengths
from hql_ray.data.corpus import SPLITS, corpus_file
from hql_ray.training.modeling import load_tokenizer

ROOT = Path(__file__).resolve().parent.parent
TREE2 = "code,level0,language\nxxx_Latn,Top,Xx\nyyy_Latn,Top,Yy\n"
PROMPT = "Translate to Xx: "  # 17 bytes: the tiny tokenizer is byte-level (+1 for EOS)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def tree(tmp_path: Path, text: str = TREE2) -> Path:
    return write(tmp_path / "tree.csv", text)


def hand_corpus(root: Path, codes=("xxx_Latn", "yyy_Latn")) -> None:
    """train: 10 lines, AMR `(a / b...b)` with 1..10 b's, sentence of 3k t's; validation/test: 2 lines."""
    for code in codes:
        train = [f"(a / {'b' * k})\t{'t' * (3 * k)}" for k in range(1, 11)]
        write(corpus_file(root, "c1", code, "train"), "\n".join(train) + "\n")
        for split in ("validation", "test"):
            write(corpus_file(root, "c1", code, split), "(a / b)\thi\n\n(a / bb)\tho\n")


def row(out: str, code: str, split: str, corpus: str) -> list[str]:
    """The table row of one language, split and corpus, as cells."""
    block = out.split(f"\n{code}  ", 1)[1].split("\n\n", 1)[0]
    for line in block.splitlines():
        cells = line.split()
        if cells[:2] == [split, corpus]:
            return cells
    raise AssertionError(f"no row {split} {corpus} for {code} in:\n{block}")


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["data", *map(str, argv)])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


# --- exact numbers ---------------------------------------------------------------------------

def test_percentile_is_nearest_rank():
    values = list(range(1, 11))
    assert [percentile(values, p) for p in (50, 90, 99, 100)] == [5, 9, 10, 10]
    assert percentile([7], 50) == 7
    assert percentile([3, 1, 2], 50) == 2


def test_counts_percentiles_and_clipping_exact(tmp_path, capsys):
    hand_corpus(tmp_path / "d")
    code, out, _ = run(capsys, tmp_path / "d", "-lf", tree(tmp_path),
                       "--max-source-length", 30, "--max-target-length", 20)
    assert code == 0
    # sources: 17 + (6 + k) + 1 = 24 + k -> 25..34; targets 3k + 1 -> 4..31
    assert len(PROMPT) == 17
    assert row(out, "xxx_Latn", "train", "c1") == ["train", "c1", "10", "29/33/34/34", "4", "16/28/31/31", "4"]
    # validation: "(a / b)" -> 25, "(a / bb)" -> 26; "hi"/"ho" -> 3; the blank line is not an example
    assert row(out, "yyy_Latn", "validation", "c1") == ["validation", "c1", "2", "25/26/26/26", "0", "3/3/3/3", "0"]
    assert "> 30" in out and "> 20" in out
    assert out.strip().splitlines()[-1] == (
        "2 languages, 28 examples (train 20, validation 4, test 4); no problems")


def test_text2amr_swaps_sides_and_totals_over_corpora(tmp_path, capsys):
    hand_corpus(tmp_path / "d")
    for split in SPLITS:  # a second corpus for xxx only: a total row appears for it
        write(corpus_file(tmp_path / "d", "c2", "xxx_Latn", split), "(z / zzzz)\tabcdefghi\n")
    for split in SPLITS:
        write(corpus_file(tmp_path / "d", "c2", "yyy_Latn", split), "(z / z)\tab\n")
    code, out, _ = run(capsys, tmp_path / "d", "-lf", tree(tmp_path), "--direction", "text2amr")
    assert code == 0
    # "Parse from Xx: " is 15 bytes; "abcdefghi" -> 15 + 9 + 1 = 25; target "(z / zzzz)" -> 11
    assert row(out, "xxx_Latn", "test", "c2") == ["test", "c2", "1", "25/25/25/25", "0", "11/11/11/11", "0"]
    # test total: c1 sources "hi","ho" -> 18, 18 and c2 -> 25; targets "(a / b)" 8, "(a / bb)" 9, c2 11
    assert row(out, "xxx_Latn", "test", "total") == ["test", "total", "3", "18/25/25/25", "0", "9/11/11/11", "0"]
    assert out.strip().splitlines()[-1].startswith("2 languages, 34 examples (train 22, validation 6, test 6)")


def test_byte_level_shortcut_matches_the_tokenizer():
    tok = load_tokenizer("tiny")
    texts = ["Translate to Xx: (a / b)", "größer – 東京 🙂", "a <pad> b", "x</s>", "", "<extra_id_3> y"]
    with pytest.warns(UserWarning):  # ByT5 warns about the literal "</s>"; the command silences it
        expected = [len(ids) for ids in tok(texts)["input_ids"]]
    assert token_lengths(tok, texts) == expected
    with pytest.warns(UserWarning):
        targets = [len(i) for i in tok(text_target=texts)["input_ids"]]
    assert token_lengths(tok, texts, target=True) == targets


# --- problems ---------------------------------------------------------------------------------

def test_every_bad_line_is_listed_with_file_and_line(tmp_path, capsys):
    hand_corpus(tmp_path / "d")
    bad = corpus_file(tmp_path / "d", "c1", "xxx_Latn", "train")
    write(bad, "(a / b)\tok\n(a / b\tunbalanced\n(a / c)\tfine\nno tab here\n(a / d)\t   \n(e / e)\tlast\n")
    code, out, _ = run(capsys, tmp_path / "d", "-lf", tree(tmp_path))
    assert code == 1
    assert f"{bad}:2: malformed AMR" in out
    assert f"{bad}:4: no tab between the AMR and the sentence" in out
    assert f"{bad}:5: empty sentence side" in out
    assert "bad lines (3):" in out
    assert row(out, "xxx_Latn", "train", "c1")[2] == "3"  # the good lines still count
    last = out.strip().splitlines()[-1]
    assert last == "2 languages, 21 examples (train 13, validation 4, test 4); 3 problems: 3 bad lines"

    # --skip-bad: the run would skip them, so they are listed but do not fail the check
    code, out, _ = run(capsys, tmp_path / "d", "-lf", tree(tmp_path), "--skip-bad")
    assert code == 0
    assert f"{bad}:2: malformed AMR" in out and f"{bad}:4: no tab" in out
    assert "bad lines (skipped by --skip-bad) (3):" in out
    assert out.strip().endswith("no problems: 3 bad lines (bad lines skipped by --skip-bad, not counted)")


def test_missing_split_files_and_language_without_data(tmp_path, capsys):
    hand_corpus(tmp_path / "d", codes=("xxx_Latn",))
    corpus_file(tmp_path / "d", "c1", "xxx_Latn", "validation").unlink()
    corpus_file(tmp_path / "d", "c1", "xxx_Latn", "test").unlink()
    code, out, _ = run(capsys, tmp_path / "d", "-lf", tree(tmp_path))
    assert code == 1
    for split in ("validation", "test"):
        assert f"{corpus_file(tmp_path / 'd', 'c1', 'xxx_Latn', split)}: missing corpus file for xxx_Latn (Xx)" in out
    assert "no data for yyy_Latn (Yy): no corpus file at all (corpora: c1)" in out
    assert out.strip().endswith("3 problems: 2 missing files, 1 other problem")


def test_empty_split_and_data_outside_the_tree(tmp_path, capsys):
    hand_corpus(tmp_path / "d", codes=("xxx_Latn", "yyy_Latn", "zzz_Latn"))
    write(corpus_file(tmp_path / "d", "c1", "yyy_Latn", "test"), "\n\n")
    code, out, _ = run(capsys, tmp_path / "d", "-lf", tree(tmp_path))
    assert code == 1
    assert "no valid test example for yyy_Latn (Yy)" in out
    assert "not in the tree (not checked): zzz_Latn" in out


def test_ldc_pair_is_shown_and_a_misaligned_one_is_a_problem(tmp_path, capsys):
    hand_corpus(tmp_path / "d")
    write(tmp_path / "d" / "graph_amr" / "graph_amr-test.txt", "(a / b)\n(a / bbb)\n")
    write(tmp_path / "d" / "xxx_Latn" / "xxx_Latn-test.txt", "one\ntwo\n")
    write(tmp_path / "d" / "yyy_Latn" / "yyy_Latn-test.txt", "only one\n")
    code, out, _ = run(capsys, tmp_path / "d", "-lf", tree(tmp_path))
    assert code == 1
    assert row(out, "xxx_Latn", "test", "ldc2020t07") == [
        "test", "ldc2020t07", "2", "25/27/27/27", "0", "4/4/4/4", "0"]
    assert "2 graphs in" in out and "but 1 sentences in" in out
    assert out.strip().endswith("1 problem: 1 other problem")


def test_read_only_no_cache_written(tmp_path, capsys):
    hand_corpus(tmp_path / "d")
    tree_file = tree(tmp_path)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert run(capsys, tmp_path / "d", "-lf", tree_file)[0] == 0
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


# --- exit 2: unusable input -------------------------------------------------------------------

def test_unusable_input_exits_2(tmp_path, capsys):
    hand_corpus(tmp_path / "d")
    code, _, err = run(capsys, tmp_path / "nowhere", "-lf", tree(tmp_path))
    assert code == 2 and "data directory does not exist" in err
    broken = write(tmp_path / "broken.csv", "code,level0,language\nxxx_Latn,,Xx\n")
    code, _, err = run(capsys, tmp_path / "d", "-lf", broken)
    assert code == 2 and f"{broken}:2:" in err
    code, _, err = run(capsys, tmp_path / "d", "-lf", tmp_path / "none.csv")
    assert code == 2
    code, _, err = run(capsys, tmp_path / "d", "-lf", tree(tmp_path), "--corpus", "amr3")
    assert code == 2 and "unknown corpus amr3; available: c1" in err
    (tmp_path / "empty").mkdir()
    code, _, err = run(capsys, tmp_path / "empty", "-lf", tree(tmp_path))
    assert code == 2 and "no corpus in the data directory" in err


# --- the bundled sample -----------------------------------------------------------------------

def test_bundled_sample_all_12_languages(capsys):
    code, out, _ = run(capsys, ROOT / "data" / "sample", "-lf", ROOT / "language_files" / "12langs_pthql.csv",
                       "-ln", "level0", "level1", "level2", "language")
    assert code == 0
    codes = ["deu", "ltz", "eng", "tpi", "nld", "lim", "ita", "scn", "spa", "ast", "fra", "hat"]
    for c in codes:
        assert row(out, f"{c}_Latn", "train", "amr3")[2] == "240"
        assert row(out, f"{c}_Latn", "train", "flores")[2] == "40"
        assert row(out, f"{c}_Latn", "train", "total")[2] == "280"
        assert row(out, f"{c}_Latn", "validation", "total")[2] == "40"
        cells = row(out, f"{c}_Latn", "test", "total")
        assert cells[2] == "40" and cells[4] == "0" and cells[6] == "0"  # nothing clipped at 512/256
    assert "\nhat_Latn  Haitian_Creole\n" in out and "\ntpi_Latn  Tok_Pisin\n" in out
    assert out.strip().splitlines()[-1] == (
        "12 languages, 4,320 examples (train 3,360, validation 480, test 480); no problems")


def test_the_originals_layout_and_a_stray_corpus(tmp_path, capsys):
    """The original's folders read as they are, LDC2020T07 included; a stray folder is checked but named
    as not used for training."""
    d = tmp_path / "d"
    for code, gold in (("xxx_Latn", "GoldAMR_SilverText"), ("eng_Latn", "GoldAMR_GoldText")):
        for split in SPLITS:
            write(d / gold / "data" / "amr3" / code / f"amr3_{code}_{split}.tsv", "(a / b)\thi\n(a / bb)\tho\n")
            write(d / "SilverAMR_GoldText" / "data" / "flores" / code / f"flores_{code}_{split}.tsv", "(a / b)\thi\n")
            write(d / "amr3_old" / code / f"amr3_old_{code}_{split}.tsv", "(a / b)\thi\n")
    write(d / "ldc2020t07" / "data" / "graph_amr" / "graph_amr-test.txt", "(a / b)\n(a / bbb)\n")
    write(d / "ldc2020t07" / "data" / "eng_Latn" / "eng_Latn-test.txt", "one\ntwo\n")
    tree_file = tree(tmp_path, "code,level0,language\nxxx_Latn,Top,Xx\neng_Latn,Top,English\n")
    code, out, _ = run(capsys, d, "-lf", tree_file)
    assert code == 0, out
    assert "corpora: amr3, amr3_old, flores" in out
    assert "training uses: amr3, flores (the original's); not used for training: amr3_old" in out
    assert row(out, "eng_Latn", "train", "amr3")[2] == "2" and row(out, "eng_Latn", "train", "flores")[2] == "1"
    assert row(out, "eng_Latn", "test", "ldc2020t07")[2] == "2"
    assert row(out, "xxx_Latn", "validation", "total")[2] == "4"
    code, out, _ = run(capsys, d, "-lf", tree_file, "--corpus", "amr3_old")
    assert "training uses: amr3_old; not used for training: amr3, flores" in out
