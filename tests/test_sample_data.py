"""The bundled sample corpus: regenerable byte for byte, well-formed, split cleanly, all 12 languages."""

from __future__ import annotations

from pathlib import Path

import penman
import pytest

from hql_ray.settings.errors import InputError
from make_sample import (
    DEFAULT_LDC, LANGUAGES, LDC_CODES, NP, SPLITS, Clause, clause_amr, main, realize, write_sample,
)

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample"
SIZES = {"amr3": {"train": 240, "validation": 30, "test": 30},
         "flores": {"train": 40, "validation": 10, "test": 10}}
CODES = ["ast_Latn", "deu_Latn", "eng_Latn", "fra_Latn", "hat_Latn", "ita_Latn", "lim_Latn", "ltz_Latn",
         "nld_Latn", "scn_Latn", "spa_Latn", "tpi_Latn"]


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _rows(path: Path) -> list[tuple[str, str]]:
    return [tuple(line.split("\t")) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def committed() -> dict[str, bytes]:
    assert SAMPLE.is_dir(), "data/sample is missing: run python data/make_sample.py data/sample"
    return _files(SAMPLE)


def test_committed_sample_is_exactly_what_the_generator_writes(tmp_path, committed):
    summary = write_sample(tmp_path, n_ldc=DEFAULT_LDC)  # what `python data/make_sample.py` writes
    fresh = _files(tmp_path)
    assert sorted(fresh) == sorted(committed)
    drift = [name for name in fresh if fresh[name] != committed[name]]
    assert drift == [], f"data/sample drifted from the generator: {drift[:3]}; regenerate it"
    assert summary["bytes"] == sum(len(b) for b in fresh.values())
    assert summary["files"]["amr3/deu_Latn/amr3_deu_Latn_train.tsv"] == len(
        committed["amr3/deu_Latn/amr3_deu_Latn_train.tsv"])
    assert summary["corpora"] == SIZES
    assert summary["languages"] == CODES


def test_layout_has_12_languages_times_2_corpora_times_3_splits(committed):
    assert sorted(LANGUAGES) == CODES
    assert LANGUAGES["tpi_Latn"] == "Tok_Pisin" and LANGUAGES["hat_Latn"] == "Haitian_Creole"
    expected = {f"{c}/{code}/{c}_{code}_{s}.tsv" for c in SIZES for code in CODES for s in SPLITS}
    ldc = {f"ldc2020t07/{name}/{name}-test.txt" for name in ("graph_amr", *LDC_CODES)}
    assert expected | ldc | {"README.md"} == set(committed)
    readme = committed["README.md"].decode()
    assert "python data/make_sample.py data/sample" in readme and "Apache-2.0" in readme


def test_every_line_is_one_amr_a_tab_and_a_sentence_with_documented_counts(committed):
    for corpus, sizes in SIZES.items():
        for code in CODES:
            for split, n in sizes.items():
                data = committed[f"{corpus}/{code}/{corpus}_{code}_{split}.tsv"].decode("utf-8")
                assert data.endswith("\n") and "\r" not in data
                lines = data.splitlines()
                assert len(lines) == n, (corpus, code, split)
                for line in lines:
                    assert line.count("\t") == 1, line
                    amr, text = line.split("\t")
                    assert amr.strip() == amr and amr.startswith("(") and text.strip() == text and text


def test_every_amr_parses_and_is_in_the_originals_single_line_format(committed):
    amrs = {line.split("\t")[0] for name, data in committed.items() if name.endswith(".tsv")
            for line in data.decode("utf-8").splitlines()}
    assert len(amrs) == sum(sum(s.values()) for s in SIZES.values())  # 360 distinct graphs
    roles: set[str] = set()
    for amr in sorted(amrs):
        graph = penman.decode(amr)
        assert penman.encode(graph, indent=None) == amr  # variables kept, one line, canonical spacing
        roles.update(role for _, role, _ in graph.triples)
        assert len(graph.variables()) == len({src for src, _, _ in graph.instances()})
    assert {":ARG0", ":ARG1", ":polarity", ":mode", ":location", ":mod", ":name", ":op1", ":wiki"} <= roles
    lengths = sorted(len(a) for a in amrs)
    assert lengths[len(lengths) * 9 // 10] < 160 and lengths[-1] <= 200


def test_want_graphs_reuse_the_agent_variable():
    c = Clause("eat-01", NP("noun", "girl"), obj=NP("noun", "apple"), want=True)
    amr = clause_amr(c)
    assert amr == "(w / want-01 :ARG0 (g / girl) :ARG1 (e / eat-01 :ARG0 g :ARG1 (a / apple)))"
    graph = penman.decode(amr)
    assert ("e", ":ARG0", "g") in graph.edges() and ("w", ":ARG0", "g") in graph.edges()


def test_no_graph_is_shared_between_splits_of_a_language(committed):
    for code in CODES:
        by_split = {s: set() for s in SPLITS}
        for corpus in SIZES:
            for split in SPLITS:
                by_split[split] |= {a for a, _ in _rows(SAMPLE / corpus / code / f"{corpus}_{code}_{split}.tsv")}
        assert not by_split["train"] & by_split["test"], code
        assert not by_split["train"] & by_split["validation"], code
        assert not by_split["validation"] & by_split["test"], code


def test_languages_are_parallel_but_sentences_differ(committed):
    path = "amr3/{0}/amr3_{0}_test.tsv"
    eng = _rows(SAMPLE / path.format("eng_Latn"))
    for code in CODES:
        rows = _rows(SAMPLE / path.format(code))
        assert [a for a, _ in rows] == [a for a, _ in eng]
        if code != "eng_Latn":
            assert sum(t != e for (_, t), (_, e) in zip(rows, eng)) > len(rows) // 2
    for code in CODES:
        texts = [t for corpus in SIZES for s in SPLITS
                 for _, t in _rows(SAMPLE / corpus / code / f"{corpus}_{code}_{s}.tsv")]
        assert sum(len(t) < 60 for t in texts) >= 0.9 * len(texts), code


def test_questions_and_negations_are_marked_consistently(committed):
    neg = {"eng": " not ", "deu": " nicht", "ltz": " net", "lim": " neet", "nld": " niet", "tpi": " no ",
           "fra": " pas ", "hat": " pa ", "ita": " non ", "scn": " nun ", "spa": " no ", "ast": " nun "}
    for code in CODES:
        for amr, text in _rows(SAMPLE / "amr3" / code / f"amr3_{code}_train.tsv"):
            assert text.endswith("?") == (":mode interrogative" in amr), (code, text)
            assert (neg[code[:3]] in text.replace(".", " ")) == (":polarity -" in amr), (code, text)


@pytest.mark.parametrize("code,expected", [
    ("eng_Latn", "The boy does not see the black cat."),
    ("deu_Latn", "Der Junge sieht die schwarze Katze nicht."),
    ("ltz_Latn", "De Jong gesäit déi schwaarz Kaz net."),
    ("nld_Latn", "De jongen ziet de zwarte kat niet."),
    ("lim_Latn", "De jong zuut de zwarte kat neet."),
    ("tpi_Latn", "Pikinini man i no lukim blakpela pusi."),
    ("fra_Latn", "Le garçon ne voit pas le chat noir."),
    ("hat_Latn", "Ti gason an pa wè chat nwa a."),
    ("ita_Latn", "Il ragazzo non vede il gatto nero."),
    ("scn_Latn", "U picciottu nun vidi u gattu nivuru."),
    ("spa_Latn", "El chico no ve al gato negro."),
    ("ast_Latn", "El rapaz nun ve al gatu prietu."),
])
def test_realisation_of_one_negated_clause_in_each_language(code, expected):
    c = Clause("see-01", NP("noun", "boy"), obj=NP("noun", "cat", "black"), neg=True)
    assert realize(code, c) == expected
    assert clause_amr(c) == "(s / see-01 :ARG0 (b / boy) :ARG1 (c / cat :mod (b2 / black)) :polarity -)"


def test_questions_names_and_cities():
    c = Clause("live-01", NP("person", "Anna"), loc=NP("city", "Rome"), question=True)
    assert clause_amr(c) == ('(l / live-01 :ARG0 (p / person :name (n / name :op1 "Anna")) :location '
                             '(c / city :wiki "Rome" :name (n2 / name :op1 "Rome")) :mode interrogative)')
    assert realize("eng_Latn", c) == "Does Anna live in Rome?"
    assert realize("deu_Latn", c) == "Wohnt Anna in Rom?"
    assert realize("fra_Latn", c) == "Est-ce qu'Anna habite à Rome ?"
    assert realize("spa_Latn", c) == "¿Anna vive en Roma?"
    assert realize("hat_Latn", c) == "Èske Anna rete nan Wòm?"
    school = Clause("work-01", NP("noun", "man"), loc=NP("noun", "school"))
    assert realize("ita_Latn", school) == "L'uomo lavora nella scuola."
    assert realize("ast_Latn", school) == "L'home trabaya na escuela."
    assert realize("lim_Latn", Clause("sleep-01", NP("noun", "child"), loc=NP("noun", "house"))) == \
        "'t Kind sleep in 't hoes."


def test_small_samples_are_deterministic_and_seed_dependent(tmp_path):
    kw = dict(n_train=5, n_validation=2, n_test=2, n_flores_train=3, n_flores_validation=1, n_flores_test=1)
    a = write_sample(tmp_path / "a", **kw)
    write_sample(tmp_path / "b", **kw)
    write_sample(tmp_path / "c", seed=1, **kw)
    assert a["corpora"] == {"amr3": {"train": 5, "validation": 2, "test": 2},
                            "flores": {"train": 3, "validation": 1, "test": 1}}
    assert len(a["files"]) == 12 * 2 * 3 + 1
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    assert _files(tmp_path / "a") != _files(tmp_path / "c")
    rows = _rows(tmp_path / "a" / "flores" / "nld_Latn" / "flores_nld_Latn_train.tsv")
    assert len(rows) == 3 and all(":wiki" in amr for amr, _ in rows)


def test_bad_requests_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="distinct"):
        write_sample(tmp_path / "x", n_train=0, n_validation=0, n_test=0, n_flores_train=5000)
    with pytest.raises(InputError, match=">= 0"):
        write_sample(tmp_path / "y", n_train=-1)
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError) as err:
        write_sample(tmp_path / "file")
    assert str(tmp_path / "file") in str(err.value)


def test_command_line(tmp_path, capsys):
    out = tmp_path / "s"
    args = [str(out), "--train", "3", "--validation", "1", "--test", "1", "--flores-train", "2",
            "--flores-validation", "1", "--flores-test", "1"]
    assert main(args) == 0
    assert len(_rows(out / "amr3" / "tpi_Latn" / "amr3_tpi_Latn_train.tsv")) == 3
    assert "wrote 78 files" in capsys.readouterr().out  # 72 TSV + README + the LDC-like pair (graphs + 4 languages)
    assert len((out / "ldc2020t07" / "deu_Latn" / "deu_Latn-test.txt").read_text().splitlines()) == 10
    assert main([str(out), "--train", "-2"]) == 2
    assert ">= 0" in capsys.readouterr().err


def test_ldc_like_pair_is_read_as_a_test_set_with_graphs_of_its_own(tmp_path):
    from hql_ray.data.corpus import load_test_set

    sample = load_test_set(SAMPLE, "ita_Latn", "ldc2020t07")
    assert len(sample) == DEFAULT_LDC and sample[0].corpus == "ldc2020t07"
    assert load_test_set(SAMPLE, "fra_Latn", "ldc2020t07") is None
    corpora = {row[0] for c in SIZES for s in SPLITS for row in _rows(SAMPLE / c / "ita_Latn" / f"{c}_ita_Latn_{s}.tsv")}
    assert not {e.amr for e in sample} & corpora
    # the corpora do not change with the pair (it is drawn last), and without it there is none
    write_sample(tmp_path)
    assert not (tmp_path / "ldc2020t07").exists()
    assert (tmp_path / "flores" / "ita_Latn" / "flores_ita_Latn_test.tsv").read_bytes() == (
        SAMPLE / "flores" / "ita_Latn" / "flores_ita_Latn_test.tsv").read_bytes()
