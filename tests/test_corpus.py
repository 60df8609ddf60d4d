"""Corpus layouts on disk -> examples; every bad input names the file, the line and the problem."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from hql_ray.settings.config import LinearizeOptions
from hql_ray.data.corpus import (
    SPLITS,
    check_layout,
    corpus_file,
    count_examples,
    discover_corpora,
    find_ldc,
    in_both_layouts,
    load_examples,
    load_test_set,
    read_ldc,
    read_tsv,
    select_corpora,
    sorted_test_sets,
    default_test_sets,
    unused_corpora,
)
from hql_ray.settings.errors import InputError

WANT = "(w / want-01 :ARG0 (b / boy) :ARG1 (g / go-02 :ARG0 b))"
CITY = '(c / city :wiki "Paris" :name (n / name :op1 "Paris"))'


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def make_corpus(root: Path, corpus: str, code: str, n: int, splits=SPLITS) -> None:
    for split in splits:
        lines = [f'(s{i} / sentence :quant {i})\t{corpus} {code} {split} {i}' for i in range(n)]
        write(corpus_file(root, corpus, code, split), "\n".join(lines) + "\n")


def test_read_tsv_linearizes_and_skips_blank_lines(tmp_path):
    path = write(tmp_path / "a.tsv", f"{WANT}\tThe boy wants to go.\n\n{CITY}\t Paris. \n")
    examples, skipped = read_tsv(path, "eng_Latn", "amr3")
    assert skipped == 0
    assert [e.amr for e in examples] == [WANT, CITY]
    assert [e.text for e in examples] == ["The boy wants to go.", "Paris."]
    assert examples[1].origin == f"{path}:3" and examples[1].lang == "eng_Latn" and examples[1].corpus == "amr3"
    examples, _ = read_tsv(path, "eng_Latn", "amr3", options=LinearizeOptions(keep_wiki=False, keep_variables=False))
    assert [e.amr for e in examples] == ["(want-01 :ARG0 boy :ARG1 (go-02 :ARG0 boy))", '(city :name (name :op1 "Paris"))']


def test_tab_in_the_sentence_stays_in_the_sentence(tmp_path):
    path = write(tmp_path / "a.tsv", f"{WANT}\tone\ttwo\n")
    examples, _ = read_tsv(path, "eng_Latn", "amr3")
    assert examples[0].text == "one\ttwo"


@pytest.mark.parametrize(
    "line, problem",
    [
        (f"{WANT} The boy.", "no tab between the AMR and the sentence"),
        ("\tThe boy.", "empty AMR side"),
        (f"{WANT}\t", "empty sentence side"),
        (f"{WANT}\t   ", "empty sentence side"),
        ("(w / want-01 :ARG0 (b / boy)\tThe boy.", "malformed AMR: unbalanced parentheses"),
        ("w / want-01\tThe boy.", "malformed AMR: Expected: LPAREN"),
    ],
)
def test_bad_tsv_line_names_file_line_and_problem(tmp_path, line, problem):
    path = write(tmp_path / "amr3_eng_Latn_train.tsv", f"{WANT}\tok\n\n{line}\n{CITY}\tok\n")
    with pytest.raises(InputError) as err:
        read_tsv(path, "eng_Latn", "amr3")
    assert err.value.path == str(path) and err.value.line == 3
    assert problem in err.value.problem
    assert str(err.value).startswith(f"{path}:3: ")
    examples, skipped = read_tsv(path, "eng_Latn", "amr3", skip_bad=True)
    assert skipped == 1 and [e.origin for e in examples] == [f"{path}:1", f"{path}:4"]


def test_skip_bad_counts_every_bad_line(tmp_path):
    path = write(tmp_path / "a.tsv", f"{WANT}\tok\nno tab\n\tx\n{WANT}\t\n(a\tx\n{CITY}\tok\n")
    examples, skipped = read_tsv(path, "eng_Latn", "amr3", skip_bad=True)
    assert skipped == 4 and len(examples) == 2


def test_on_bad_and_shared_amr_cache_across_parallel_files(tmp_path):
    """Two languages of a parallel corpus: each graph is parsed once, each bad line still reported
    at its own file and line."""
    eng = write(tmp_path / "eng.tsv", f"{WANT}\tThe boy wants to go.\n(a\tbroken\n{CITY}\tParis\n")
    deu = write(tmp_path / "deu.tsv", f"{WANT}\tDer Junge will gehen.\n\n(a\tkaputt\n{CITY}\tParis\n")
    cache: dict = {}
    seen: list[InputError] = []
    out = [read_tsv(p, lang, "amr3", skip_bad=True, on_bad=seen.append, amr_cache=cache)
           for p, lang in ((eng, "eng_Latn"), (deu, "deu_Latn"))]
    assert [skipped for _, skipped in out] == [1, 1]
    assert [(e.path, e.line) for e in seen] == [(str(eng), 2), (str(deu), 3)]
    assert all("malformed AMR" in e.problem for e in seen)
    assert len(cache) == 3  # WANT, CITY and the broken graph, whatever the number of files
    plain, _ = read_tsv(deu, "deu_Latn", "amr3", skip_bad=True)
    assert [e.amr for e in out[1][0]] == [e.amr for e in plain]
    assert [e.text for e in out[1][0]] == ["Der Junge will gehen.", "Paris"]


def test_discover_and_narrow(tmp_path):
    make_corpus(tmp_path, "amr3", "deu_Latn", 3)
    make_corpus(tmp_path, "flores", "deu_Latn", 2)
    (tmp_path / "notes").mkdir()  # a folder that is not a corpus
    write(tmp_path / "junk" / "deu_Latn" / "other.tsv", "x\ty\n")
    assert discover_corpora(tmp_path) == ["amr3", "flores"]
    examples, _ = load_examples(tmp_path, "deu_Latn", "train", corpora=["flores"])
    assert [e.corpus for e in examples] == ["flores", "flores"]
    with pytest.raises(InputError) as err:
        load_examples(tmp_path, "deu_Latn", "train", corpora=["amr2"])
    assert "unknown corpus amr2; available: amr3, flores" in str(err.value)


def test_union_of_two_corpora(tmp_path):
    make_corpus(tmp_path, "amr3", "deu_Latn", 3)
    make_corpus(tmp_path, "flores", "deu_Latn", 2)
    examples, skipped = load_examples(tmp_path, "deu_Latn", "validation")
    assert skipped == 0
    assert [e.text for e in examples] == [
        "amr3 deu_Latn validation 0",
        "amr3 deu_Latn validation 1",
        "amr3 deu_Latn validation 2",
        "flores deu_Latn validation 0",
        "flores deu_Latn validation 1",
    ]
    assert examples[0].amr == "(s0 / sentence :quant 0)"


def test_count_examples(tmp_path):
    make_corpus(tmp_path, "amr3", "deu_Latn", 3)
    make_corpus(tmp_path, "flores", "deu_Latn", 2)
    write(corpus_file(tmp_path, "flores", "ltz_Latn", "train"), "a\tb\n\n  \nnot even an AMR\n")
    assert count_examples(tmp_path, "deu_Latn", "train") == 5
    assert count_examples(tmp_path, "deu_Latn", "train", corpora=["amr3"]) == 3
    assert count_examples(tmp_path, "ltz_Latn", "train") == 2  # no parsing: blank lines only are left out
    assert count_examples(tmp_path, "ltz_Latn", "test") == 0
    with pytest.raises(InputError) as err:
        count_examples(tmp_path / "nope", "deu_Latn", "train")
    assert "data directory does not exist" in str(err.value)


def test_cap_is_a_deterministic_seeded_sample(tmp_path):
    make_corpus(tmp_path, "amr3", "deu_Latn", 40, splits=("train",))
    make_corpus(tmp_path, "flores", "deu_Latn", 20, splits=("train",))
    full, _ = load_examples(tmp_path, "deu_Latn", "train")
    a, _ = load_examples(tmp_path, "deu_Latn", "train", cap=25, seed=1)
    b, _ = load_examples(tmp_path, "deu_Latn", "train", cap=25, seed=1)
    c, _ = load_examples(tmp_path, "deu_Latn", "train", cap=25, seed=2)
    assert len(a) == 25 and a == b
    assert [e.text for e in a] != [e.text for e in c]
    position = {e.origin: i for i, e in enumerate(full)}
    assert [position[e.origin] for e in a] == sorted(position[e.origin] for e in a)  # file order kept
    assert {e.corpus for e in a} == {"amr3", "flores"}  # sampled over the union
    assert load_examples(tmp_path, "deu_Latn", "train", cap=100)[0] == full


def test_cap_per_corpus_keeps_every_corpus(tmp_path):
    """data.max_train_per_corpus: each corpus of a language capped apart, so a big amr3 never thins flores."""
    make_corpus(tmp_path, "amr3", "deu_Latn", 40, splits=("train",))
    make_corpus(tmp_path, "flores", "deu_Latn", 20, splits=("train",))
    make_corpus(tmp_path, "amr3", "nld_Latn", 40, splits=("train",))
    make_corpus(tmp_path, "flores", "nld_Latn", 20, splits=("train",))
    deu, _ = load_examples(tmp_path, "deu_Latn", "train", cap_per_corpus=25, seed=3)
    assert [e.corpus for e in deu] == ["amr3"] * 25 + ["flores"] * 20
    nld, _ = load_examples(tmp_path, "nld_Latn", "train", cap_per_corpus=25, seed=3)
    rows = lambda examples: [e.origin.rsplit(":", 1)[1] for e in examples]  # noqa: E731
    assert rows(deu) == rows(nld)  # same seed, same rows: the languages keep the same graphs
    assert rows(deu) != rows(load_examples(tmp_path, "deu_Latn", "train", cap_per_corpus=25, seed=4)[0])
    assert count_examples(tmp_path, "deu_Latn", "train", cap_per_corpus=25) == 45
    first, _ = load_examples(tmp_path, "deu_Latn", "train", first_per_corpus=2)
    assert [e.text for e in first] == ["amr3 deu_Latn train 0", "amr3 deu_Latn train 1",
                                       "flores deu_Latn train 0", "flores deu_Latn train 1"]


def test_missing_data_dir_and_empty_data_dir(tmp_path):
    with pytest.raises(InputError) as err:
        check_layout(tmp_path / "nope", ["deu_Latn"])
    assert err.value.path == str(tmp_path / "nope") and "does not exist" in err.value.problem
    with pytest.raises(InputError) as err:
        load_examples(tmp_path, "deu_Latn", "train")
    assert err.value.path == str(tmp_path) and "no corpus" in err.value.problem


@dataclass(frozen=True)
class Lang:
    code: str
    name: str


def test_check_layout_names_the_missing_file(tmp_path):
    make_corpus(tmp_path, "amr3", "deu_Latn", 1)
    make_corpus(tmp_path, "flores", "deu_Latn", 1)
    make_corpus(tmp_path, "flores", "ltz_Latn", 1)
    assert check_layout(tmp_path, ["deu_Latn"]) == ["amr3", "flores"]
    assert check_layout(tmp_path, ["ltz_Latn"], corpora=["flores"]) == ["flores"]
    missing = corpus_file(tmp_path, "amr3", "ltz_Latn", "train")
    with pytest.raises(InputError) as err:
        check_layout(tmp_path, [Lang("deu_Latn", "German"), Lang("ltz_Latn", "Luxembourgish")])
    assert str(err.value) == f"{missing}: missing corpus file for ltz_Latn (Luxembourgish)"
    with pytest.raises(InputError) as err:
        check_layout(tmp_path, ["deu_Latn"], corpora=["amr3", "wmt"])
    assert "unknown corpus wmt; available: amr3, flores" in err.value.problem


def test_load_examples_without_any_file_for_the_language(tmp_path):
    make_corpus(tmp_path, "amr3", "deu_Latn", 1)
    with pytest.raises(InputError) as err:
        load_examples(tmp_path, "tpi_Latn", "train", corpora=["amr3"])
    assert err.value.path == str(corpus_file(tmp_path, "amr3", "tpi_Latn", "train"))
    assert "no corpus file for tpi_Latn train" in err.value.problem


SINGLE_GRAPHS = f"{WANT}\n{CITY}\n"
MULTI_GRAPHS = f"""\
# ::id a.1
# ::snt The boy wants to go.
(w / want-01
   :ARG0 (b / boy)
   :ARG1 (g / go-02 :ARG0 b))

# ::id a.2
(c / city :wiki "Paris"
   :name (n / name :op1 "Paris"))
"""


@pytest.mark.parametrize("graphs, lines", [(SINGLE_GRAPHS, [1, 2]), (MULTI_GRAPHS, [1, 7])])
def test_read_ldc_both_graph_formats(tmp_path, graphs, lines):
    graph_file = write(tmp_path / "graph_amr" / "graph_amr-test.txt", graphs)
    text_file = write(tmp_path / "deu_Latn" / "deu_Latn-test.txt", "Der Junge will gehen.\nParis.\n")
    assert find_ldc(tmp_path, "deu_Latn") == (graph_file, text_file)
    assert find_ldc(tmp_path, "ita_Latn") is None
    examples = read_ldc(graph_file, text_file, "deu_Latn")
    assert [(e.amr, e.text) for e in examples] == [(WANT, "Der Junge will gehen."), (CITY, "Paris.")]
    assert [e.origin for e in examples] == [f"{graph_file}:{n}" for n in lines]
    assert examples[0].lang == "deu_Latn" and examples[0].corpus == "ldc2020t07"
    no_wiki = read_ldc(graph_file, text_file, "deu_Latn", options=LinearizeOptions(keep_wiki=False))
    assert no_wiki[1].amr == '(c / city :name (n / name :op1 "Paris"))'


def test_read_ldc_different_lengths_names_both_files_and_counts(tmp_path):
    graph_file = write(tmp_path / "g.txt", SINGLE_GRAPHS)
    text_file = write(tmp_path / "t.txt", "one\ntwo\nthree\n")
    with pytest.raises(InputError) as err:
        read_ldc(graph_file, text_file, "eng_Latn")
    assert f"2 graphs in {graph_file} but 3 sentences in {text_file}" in str(err.value)


def test_read_ldc_malformed_graph_and_empty_sentence(tmp_path):
    graph_file = write(tmp_path / "g.txt", f"{WANT}\n(c / city :name\n")
    text_file = write(tmp_path / "t.txt", "one\ntwo\n")
    with pytest.raises(InputError) as err:
        read_ldc(graph_file, text_file, "eng_Latn")
    assert err.value.path == str(graph_file) and err.value.line == 2 and "malformed AMR" in err.value.problem
    graph_file = write(tmp_path / "g.txt", SINGLE_GRAPHS)
    text_file = write(tmp_path / "t.txt", "\ntwo\n")
    with pytest.raises(InputError) as err:
        read_ldc(graph_file, text_file, "eng_Latn")
    assert err.value.path == str(text_file) and err.value.line == 1 and "empty sentence" in err.value.problem


def test_non_utf8_line_is_named(tmp_path):
    path = tmp_path / "a.tsv"
    path.write_bytes(f"{WANT}\tok\n".encode() + b"(a / b)\t\xff\xfe\n")
    with pytest.raises(InputError) as err:
        read_tsv(path, "eng_Latn", "amr3")
    assert err.value.line == 2 and "not UTF-8" in err.value.problem
    examples, skipped = read_tsv(path, "eng_Latn", "amr3", skip_bad=True)
    assert skipped == 1 and len(examples) == 1


# ---- corpora used, the original's layout, test sets -----------------------------------------------

def test_corpora_used_are_the_originals_when_there_else_every_corpus(tmp_path):
    make_corpus(tmp_path, "amr3", "deu_Latn", 2)
    make_corpus(tmp_path, "amr3_old", "deu_Latn", 2)
    # no flores: not the original's data, so every corpus of the folder, and their test splits are scored
    assert select_corpora(tmp_path, None) == ["amr3", "amr3_old"]
    assert default_test_sets(tmp_path, ["amr3", "amr3_old"]) == ["amr3", "amr3_old"]
    make_corpus(tmp_path, "flores", "deu_Latn", 1)
    assert select_corpora(tmp_path, None) == ["amr3", "flores"]
    assert default_test_sets(tmp_path, ["amr3", "flores"]) == ["flores", "ldc2020t07"]  # the original's
    assert default_test_sets(tmp_path, ["qald9", "amr3", "flores"]) == ["flores", "ldc2020t07", "qald9"]
    assert sorted_test_sets(["zz", "amr3", "qald9", "ldc2020t07", "flores"]) == [
        "flores", "ldc2020t07", "amr3", "qald9", "zz"]
    assert unused_corpora(tmp_path, ["amr3", "flores"]) == ["amr3_old"]  # there, never trained on
    examples, _ = load_examples(tmp_path, "deu_Latn", "train")
    assert {e.corpus for e in examples} == {"amr3", "flores"}
    with pytest.raises(InputError) as err:
        select_corpora(tmp_path, ["amr4"])
    assert err.value.problem == "unknown corpus amr4; available: amr3, amr3_old, flores"


def original_layout(root: Path) -> None:
    """The original repository's data folder: one folder per dataset script, English amr3 gold."""
    for code in ("deu_Latn", "eng_Latn"):
        for split in SPLITS:
            folder = "GoldAMR_GoldText" if code == "eng_Latn" else "GoldAMR_SilverText"
            # GoldAMR_SilverText's script does not strip the AMR: a trailing space before the tab is read as is
            write(root / folder / "data" / "amr3" / code / f"amr3_{code}_{split}.tsv",
                  f"{WANT} \t{code} amr3 {split}\n")
            write(root / "SilverAMR_GoldText" / "data" / "flores" / code / f"flores_{code}_{split}.tsv",
                  f"{CITY}\t{code} flores {split}\n")
    write(root / "ldc2020t07" / "data" / "graph_amr" / "graph_amr-test.txt", f"  {WANT}\n{CITY}\n")
    write(root / "ldc2020t07" / "data" / "deu_Latn" / "deu_Latn-test.txt", "Er will gehen.\nParis.\n")


def test_the_originals_layout_is_read_unchanged(tmp_path):
    original_layout(tmp_path)
    assert discover_corpora(tmp_path) == ["amr3", "flores"]
    assert corpus_file(tmp_path, "amr3", "deu_Latn", "train") == (
        tmp_path / "GoldAMR_SilverText" / "data" / "amr3" / "deu_Latn" / "amr3_deu_Latn_train.tsv")
    assert corpus_file(tmp_path, "amr3", "eng_Latn", "test") == (
        tmp_path / "GoldAMR_GoldText" / "data" / "amr3" / "eng_Latn" / "amr3_eng_Latn_test.tsv")
    assert check_layout(tmp_path, ["deu_Latn", "eng_Latn"]) == ["amr3", "flores"]
    examples, _ = load_examples(tmp_path, "eng_Latn", "validation")
    assert [(e.amr, e.text, e.corpus) for e in examples] == [
        (WANT, "eng_Latn amr3 validation", "amr3"), (CITY, "eng_Latn flores validation", "flores")]
    # a missing file is expected where that corpus lives
    assert corpus_file(tmp_path, "flores", "tpi_Latn", "train") == (
        tmp_path / "SilverAMR_GoldText" / "data" / "flores" / "tpi_Latn" / "flores_tpi_Latn_train.tsv")
    assert in_both_layouts(tmp_path, ["amr3", "flores"]) == {}  # English amr3 in its own folder is not "twice"
    ours = write(tmp_path / "flores" / "deu_Latn" / "flores_deu_Latn_test.tsv", f"{WANT}\tours\n")
    assert set(in_both_layouts(tmp_path, ["amr3", "flores"])) == {"flores"}
    assert corpus_file(tmp_path, "flores", "deu_Latn", "test") == ours  # ours, next to the original's, is read first
    assert corpus_file(tmp_path, "flores", "eng_Latn", "test").parts[-5] == "SilverAMR_GoldText"


def test_load_test_set_each_set_apart(tmp_path):
    original_layout(tmp_path)
    flores = load_test_set(tmp_path, "deu_Latn", "flores")
    assert [(e.amr, e.text, e.corpus) for e in flores] == [(CITY, "deu_Latn flores test", "flores")]
    assert [e.text for e in load_test_set(tmp_path, "deu_Latn", "amr3")] == ["deu_Latn amr3 test"]
    ldc = load_test_set(tmp_path, "deu_Latn", "ldc2020t07")
    assert [(e.amr, e.text, e.corpus) for e in ldc] == [(WANT, "Er will gehen.", "ldc2020t07"),
                                                         (CITY, "Paris.", "ldc2020t07")]
    assert load_test_set(tmp_path, "eng_Latn", "ldc2020t07") is None  # no eng_Latn-test.txt here
    assert load_test_set(tmp_path, "fra_Latn", "flores") is None
    # our flat layout: <dir>/ldc2020t07/graph_amr/..., <dir>/flores/<code>/...
    make_corpus(tmp_path / "flat", "flores", "ita_Latn", 2)
    write(tmp_path / "flat" / "ldc2020t07" / "graph_amr" / "graph_amr-test.txt", f"{WANT}\n")
    write(tmp_path / "flat" / "ldc2020t07" / "ita_Latn" / "ita_Latn-test.txt", "Vuole andare.\n")
    assert [e.text for e in load_test_set(tmp_path / "flat", "ita_Latn", "ldc2020t07")] == ["Vuole andare."]
    assert len(load_test_set(tmp_path / "flat", "ita_Latn", "flores")) == 2


def test_ldc_single_line_file_with_indented_and_bad_lines(tmp_path):
    """Leading whitespace never turns a one-graph-per-line file into one block (review C17), and a bad
    graph is reported at its own line."""
    graph_file = write(tmp_path / "g.txt", f"{WANT}\n   {CITY}\n\t{WANT}\n")
    text_file = write(tmp_path / "t.txt", "a\nb\nc\n")
    assert [e.origin for e in read_ldc(graph_file, text_file, "deu_Latn")] == [
        f"{graph_file}:{n}" for n in (1, 2, 3)]
    write(graph_file, f"{WANT}\n  (c / city :name\n{CITY}\n")
    with pytest.raises(InputError) as err:
        read_ldc(graph_file, text_file, "deu_Latn")
    assert err.value.line == 2 and "malformed AMR" in err.value.problem
