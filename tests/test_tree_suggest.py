"""`hql-ray tree suggest / convert / show`: trees from URIEL (lang2vec's data), Newick both ways, the
drawing, and the errors for unknown codes and malformed Newick. Fast (no Ray) but for the last test,
which trains a suggested tree through the real driver (slow)."""

from __future__ import annotations


import numpy as np
import pytest

from conftest import REPO, tiny_overrides
from hql_ray.cli import main
from hql_ray.settings import clades, newick, typology, uriel
from hql_ray.settings.errors import InputError
from hql_ray.settings.tree import load_tree, tree_csv, tree_from_rows, tree_rows

FILES = REPO / "language_files"
PAPER = load_tree(FILES / "12langs_pthql.csv")
CODES = [lang.code for lang in PAPER.languages]


def suggested(by: str, codes=CODES, depth: int = 3):
    made = typology.suggest(codes, by, depth)
    return made, tree_from_rows(made.levels, made.rows, f"<{by}>")


# --- suggest ---------------------------------------------------------------------------------

def test_genetic_never_mixes_germanic_and_romance_below_the_root():
    """The paper's PTHQL tree says which of its languages are Germanic and which Romance."""
    germanic = set(PAPER.node("level1.Germanic").codes)
    romance = set(PAPER.node("level1.Romance").codes)
    _, tree = suggested("genetic")
    (root,) = tree.roots
    assert tree.nodes[root].name == "Indo_European" and set(tree.nodes[root].codes) == set(CODES)
    for node in tree.nodes.values():
        if node.id != root:
            assert not (set(node.codes) & germanic and set(node.codes) & romance), node
    # Its two level-1 groups are exactly the paper's, named after the Glottolog families.
    level1 = {n.name: set(n.codes) for n in tree.nodes_at_depth(1)}
    assert level1 == {"Germanic": germanic, "Italic": romance}
    level2 = {n.name: set(n.codes) for n in tree.nodes_at_depth(2)}
    assert level2["North_Sea_Germanic"] == {"eng_Latn", "tpi_Latn"}
    assert level2["Italo_Dalmatian"] == {"ita_Latn", "scn_Latn"}
    assert len(tree.leaves()) == 12 and tree.levels == ["level0", "level1", "level2", "language"]


@pytest.mark.parametrize("by", list(typology.GROUPINGS))
def test_every_mode_writes_a_tree_file_that_loads(by, tmp_path):
    made = typology.suggest(CODES, by, 3)
    path = tmp_path / f"{by}.csv"
    path.write_text(tree_csv(made.levels, made.rows), encoding="utf-8")
    tree = load_tree(path, ["level0", "level1", "level2", "language"])
    assert sorted(lang.code for lang in tree.languages) == sorted(CODES)
    assert {lang.name for lang in tree.languages} == {lang.name for lang in PAPER.languages}
    assert [n.name for n in tree.leaves()] == [lang.name for lang in tree.languages]  # one leaf each
    assert len(tree.roots) == 1 and tree.nodes[tree.roots[0]].name == "Indo_European"
    for node in tree.nodes.values():  # nested: a child's languages are among its parent's
        if node.parent:
            assert set(node.codes) <= set(tree.nodes[node.parent].codes)


@pytest.mark.parametrize("by", [b for b in typology.GROUPINGS if b != "genetic"])
def test_distance_modes_cut_about_n_to_the_k_over_d_groups(by):
    _, tree = suggested(by)
    counts = [len(tree.nodes_at_depth(k)) for k in range(4)]
    assert counts[0] == 1 and counts[3] == 12
    assert 1 <= counts[1] <= 2 and counts[1] <= counts[2] <= 5  # round(12 ** (1/3)) = 2, round(12 ** (2/3)) = 5


def test_depth_limits_the_levels_and_pads_short_branches():
    _, shallow = suggested("genetic", depth=1)  # the root, then every language: the multilingual stage
    assert shallow.levels == ["level0", "language"] and len(shallow.nodes) == 13
    made, deep = suggested("genetic", depth=6)
    rows = {row.code: row.groups for row in made.rows}
    assert rows["deu_Latn"] == ("Indo_European", "Germanic", "Franconian", "High_Franconian")  # as deep as the families go
    assert rows["nld_Latn"][3] == "Dutch"  # alone below Franconian: a group of its own
    assert deep.levels == ["level0", "level1", "level2", "level3", "language"]


def test_syntax_keeps_the_closest_pair_and_separates_the_outlier():
    vectors = uriel.vectors(["deu", "nld", "tpi"], "syntax")
    distance = typology.cosine_distances(vectors)
    assert distance[0, 1] < distance[0, 2] and distance[0, 1] < distance[1, 2]
    _, tree = suggested("syntax", codes=["deu_Latn", "nld_Latn", "tpi_Latn"], depth=2)
    level1 = sorted(sorted(n.codes) for n in tree.nodes_at_depth(1))
    assert level1 == [["deu_Latn", "nld_Latn"], ["tpi_Latn"]]


def test_learned_fills_a_missing_vector_from_the_closest_relatives():
    table = uriel.learned_vectors()
    assert "deu" in table and "ltz" not in table and table["deu"].shape == (512,)
    made = typology.suggest(["deu_Latn", "ltz_Latn", "fra_Latn"], "learned", 2)
    (note,) = made.notes
    assert note.startswith("ltz_Latn: no learned vector; the mean of High_Franconian's") and "deu" in note


def test_mix_is_the_mean_of_four_scaled_distances():
    langs = uriel.resolve(["deu_Latn", "ltz_Latn", "ita_Latn", "tpi_Latn"])
    mixed, _ = typology.GROUPINGS["mix"].distances(langs)
    parts = [typology.genetic_distances(langs)] + [typology.GROUPINGS[m].distances(langs)[0]
                                                   for m in ("syntax", "phonology", "geo")]
    assert np.allclose(mixed, np.mean([p / p.max() for p in parts], axis=0))
    assert np.allclose(np.diag(mixed), 0) and mixed.max() <= 1
    genetic = parts[0]
    assert genetic[0, 1] == 0 and genetic[0, 2] == pytest.approx(1 - 1 / 9)  # Indo_European shared; ita is 9 deep


def test_codes_names_and_flores_200():
    langs = uriel.resolve(["deu_Latn", "nl", "hat", "ell_Grek", "zho_Hans", "zho_Hant"])
    assert [(lang.iso, lang.name) for lang in langs] == [
        ("deu", "German"), ("nld", "Dutch"), ("hat", "Haitian_Creole"), ("ell", "Modern_Greek"),
        ("zho", "Chinese_Hans"), ("zho", "Chinese_Hant")]  # one name twice: told apart by the script
    # The paper's names are those of its tree files.
    assert {uriel.display_name(code[:3]) for code in CODES} == {lang.name for lang in PAPER.languages}
    # Every FLORES-200 code (NLLB's list) is a URIEL language with complete syntax vectors.
    from transformers.models.nllb.tokenization_nllb import FAIRSEQ_LANGUAGE_CODES as flores

    isos = [lang.iso for lang in uriel.resolve(list(flores))]
    assert (uriel.vectors(isos, "syntax", "geo") != -1).all()
    no_family = sorted(iso for iso, path in uriel.family_paths(isos).items() if not path)
    assert no_family == ["eus", "ltg"]  # Basque is an isolate; URIEL has no family for Latgalian


def test_unknown_codes_list_close_matches(capsys):
    with pytest.raises(InputError) as info:
        typology.suggest(["deu_Latn", "dcu_Latn", "42"], "genetic")
    message = str(info.value)
    assert message.startswith("--langs: unknown language 'dcu_Latn'")
    assert "close matches: deu_Latn (German)" in message
    assert "'42' is not a language code" in message
    assert main(["tree", "suggest", "--langs", "deu_Latn,itq_Latn"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hql-ray tree: error: --langs: unknown language 'itq_Latn'") and "Traceback" not in err
    assert "ita_Latn (Italian)" in err and err.count("\n") == 1


def test_suggest_cli_writes_csv_or_newick(tmp_path, capsys):
    out = tmp_path / "syntax.csv"
    assert main(["tree", "suggest", "--langs", str(FILES / "12langs_pthql.csv"), "--by", "syntax", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and "tree.levels=[level0, level1, level2, language]" in printed
    assert load_tree(out).summary() == "20 nodes, 4 levels, 12 languages"
    nwk = tmp_path / "genetic.nwk"
    assert main(["tree", "suggest", "--langs", "deu_Latn", "nld_Latn", "ita_Latn", "--depth", "2", "-o", str(nwk)]) == 0
    assert nwk.read_text() == ("(('German [deu_Latn]','Dutch [nld_Latn]')Germanic,('Italian [ita_Latn]')Italian)"
                               "Indo_European;\n")  # the tree as it trains: Italian has a level-1 stage of its own
    capsys.readouterr()
    assert main(["tree", "suggest", "--langs", "deu_Latn", "nld_Latn", "--depth", "1"]) == 0  # CSV on stdout
    assert capsys.readouterr().out == ("code,level0,language\ndeu_Latn,Indo_European,German\n"
                                       "nld_Latn,Indo_European,Dutch\n")  # the widest family they share


# --- Newick ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["12langs_pthql.csv", "12langs_dlhql.csv", "12langs.csv"])
def test_csv_newick_csv_round_trip(name, tmp_path):
    original = (FILES / name).read_text(encoding="utf-8")
    nwk = tmp_path / "tree.nwk"
    assert main(["tree", "convert", str(FILES / name), "-o", str(nwk)]) == 0
    text = nwk.read_text()
    assert text.count(";") == 1 and "'Haitian_Creole [hat_Latn]'" in text
    back = tmp_path / "back.csv"
    assert main(["tree", "convert", str(nwk), "-o", str(back)]) == 0
    assert back.read_text(encoding="utf-8") == original
    assert newick.dumps(newick.parse(text)) == text  # and Newick -> Newick


def test_newick_reads_glottolog_labels_lengths_and_comments():
    text = """((  'Standard German [stan1295][deu]-l-':1.5 , 'Dutch [dutc1256][nld]-l-':2e-1)[a comment]
       'West Germanic [west2793]', ita_Latn:0.3,
       'O''Brien [gle_Latn]')'Indo-European [indo1319]';"""
    root = newick.parse(text)
    levels, rows = clades.to_rows(root)
    assert levels == ["level0", "level1"]
    assert [(r.code, r.name, r.groups) for r in rows] == [
        ("deu", "Standard_German", ("Indo-European", "West_Germanic")),
        ("nld", "Dutch", ("Indo-European", "West_Germanic")),
        ("ita_Latn", "Italian", ("Indo-European", "Italian")),
        ("gle_Latn", "O'Brien", ("Indo-European", "O'Brien")),
    ]
    # 'Indo-European [indo1319]' with no code is read as a language without one: refused at its place.
    with pytest.raises(InputError, match=r"<newick>:1: column 2: language 'Indo-European \[indo1319\]' has no code"):
        newick.parse("('Indo-European [indo1319]', deu_Latn);")


@pytest.mark.parametrize("text, line, column, problem", [
    ("((deu_Latn,nld_Latn)X", 1, 22, "expected ',' or ')', found the end of the file (the '(' is at line 1, column 1)"),
    ("(deu_Latn,nld_Latn));", 1, 20, "expected ';' at the end of the tree, found ')'"),
    ("(deu_Latn,\n  (nld_Latn,German)X)Y;", 2, 13, "language 'German' has no code"),
    ("(deu_Latn,nld_Latn:x);", 1, 20, "expected a branch length after ':', found 'x'"),
    ("(deu_Latn,[never closed nld_Latn);", 1, 11, "comment '[' is never closed"),
    ("('deu_Latn,nld_Latn);", 1, 2, "quote ' is never closed"),
    ("(deu_Latn,nld_Latn);\n(ita_Latn);", 2, 1, "text after the tree's ';' (one tree per file)"),
    ("(deu_Latn,,nld_Latn);", 1, 11, "expected a language or '(', found ','"),
    ("(deu_Latn, 'Deutsch [deu_Latn]');", 1, 12, "language deu_Latn appears twice (first at line 1, column 2)"),
    ("   \n", 2, 1, "empty file"),
])
def test_malformed_newick_is_refused_at_its_position(text, line, column, problem, tmp_path, capsys):
    path = tmp_path / "bad.nwk"
    path.write_text(text)
    with pytest.raises(InputError) as info:
        newick.read_tree(path)
    assert (info.value.path, info.value.line) == (str(path), line)
    assert info.value.problem.startswith(f"column {column}: {problem}")
    assert main(["tree", "show", str(path)]) == 2
    assert f"{path}:{line}: column {column}: " in capsys.readouterr().err


def test_two_groups_of_one_name_at_a_level_are_refused():
    root = newick.parse("((deu_Latn,nld_Latn)X,\n (ita_Latn,spa_Latn)X)R;")
    with pytest.raises(InputError, match=r"t.nwk:2: column 2: two groups at level 1 are both named 'X' "
                                         r"\(the first at line 1, column 2\)"):
        clades.to_rows(root, source="t.nwk")


def test_newick_depth_drops_deeper_groups(tmp_path, capsys):
    path = tmp_path / "deep.nwk"
    path.write_text("(((deu_Latn,ltz_Latn)HG,nld_Latn)WG,ita_Latn)IE;")
    assert main(["tree", "convert", str(path), "--depth", "2"]) == 0
    assert capsys.readouterr().out == ("code,level0,level1,language\ndeu_Latn,IE,WG,German\n"
                                       "ltz_Latn,IE,WG,Luxembourgish\nnld_Latn,IE,WG,Dutch\n"
                                       "ita_Latn,IE,Italian,Italian\n")
    assert main(["tree", "convert", str(FILES / "12langs.csv"), "--depth", "2"]) == 2  # a CSV: -ln picks levels
    assert "--depth 2: cuts a Newick tree" in capsys.readouterr().err


# --- show ------------------------------------------------------------------------------------

def test_show_draws_csv_and_newick_alike(tmp_path, capsys):
    assert main(["tree", "show", str(FILES / "12langs_pthql.csv")]) == 0
    from_csv = capsys.readouterr().out
    assert main(["tree", str(FILES / "12langs_pthql.csv")]) == 0  # the older spelling, same drawing
    assert capsys.readouterr().out == from_csv
    nwk = tmp_path / "pthql.nwk"
    nwk.write_text(newick.tree_to_newick(PAPER))
    assert main(["tree", "show", str(nwk), "-ln", "level0", "level1", "language"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"{nwk}  (levels: level0 > level1 > language)"
    assert lines[1].startswith("level0.Indo_European  [deu_Latn German, ltz_Latn Luxembourgish")
    assert lines[2].startswith("├── level1.Germanic  [deu_Latn German")
    assert lines[3] == "│   ├── language.German  [deu_Latn German]"
    assert lines[-2] == "    └── language.Haitian_Creole  [hat_Latn Haitian_Creole]"
    assert lines[-1] == "15 nodes, 3 levels, 12 languages"


def test_tree_rows_give_back_the_file():
    for name in ("12langs_pthql.csv", "ast.csv"):
        tree = load_tree(FILES / name)
        assert tree_csv(*tree_rows(tree)) == (FILES / name).read_text(encoding="utf-8")


# --- each mode's tree passes a run's checks; one trains -------------------------------------

@pytest.mark.parametrize("by", list(typology.GROUPINGS))
def test_every_mode_passes_the_dry_run_on_the_sample(by, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    tree = tmp_path / f"{by}.csv"
    assert main(["tree", "suggest", "--langs", str(FILES / "12langs_pthql.csv"), "--by", by, "-o", str(tree)]) == 0
    argv = ["train", "--dry-run", "--config", "configs/demo.yaml", f"run.output_dir={tmp_path}",
            f"data.cache_dir={tmp_path / 'cache'}", f"tree.file={tree}", "tree.levels=[level0, level1, level2, language]"]
    assert main(argv) == 0
    assert "dry run: 0 problem(s)" in capsys.readouterr().out


@pytest.mark.slow
def test_a_suggested_tree_trains_through_the_driver(ray_session, small_corpus, tmp_path):
    from hql_ray.orchestration.driver import Driver
    from hql_ray.settings.config import make_config

    tree = tmp_path / "syntax.csv"
    assert main(["tree", "suggest", "--langs", "deu_Latn", "nld_Latn", "tpi_Latn", "ita_Latn",
                 "--by", "syntax", "--depth", "2", "-o", str(tree)]) == 0
    cfg = make_config(overrides=tiny_overrides(tmp_path / "runs", small_corpus, tree, **{"run.name": "suggested"}))
    manifest = Driver(cfg).run()
    assert {v.status for v in manifest.nodes.values()} == {"done"}
    assert set(manifest.nodes) == set(load_tree(tree).nodes)
    for code in ("deu_Latn", "nld_Latn", "tpi_Latn", "ita_Latn"):
        assert (tmp_path / "runs" / "suggested" / "final" / code / "adapter_model.safetensors").is_file()
