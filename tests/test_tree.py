"""Language trees: the shipped tree files, level choices, and every bad-input message."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hql_ray.cli import main
from hql_ray.settings.errors import ConfigError, InputError
from hql_ray.settings.tree import Language, LanguageTree, level_columns, load_tree, parse_level_args

FILES = Path(__file__).resolve().parent.parent / "language_files"
ALL4 = ["level0", "level1", "level2", "language"]
CODES = ["ast", "deu", "eng", "fra", "hat", "ita", "lim", "ltz", "nld", "scn", "spa", "tpi"]
HEADER = "code,level0,level1,level2,language\n"


def names(nodes) -> list[str]:
    return [node.id for node in nodes]


def write(tmp_path: Path, text: str, name: str = "tree.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# --- the shipped trees -----------------------------------------------------------------------

def test_pthql_tree_structure():
    tree = load_tree(FILES / "12langs_pthql.csv", ALL4)
    assert len(tree.nodes) == 21
    assert tree.roots == ["level0.Indo_European"]
    assert tree.levels == ALL4
    assert [len(tree.nodes_at_depth(d)) for d in range(4)] == [1, 2, 6, 12]
    assert names(tree.children_of("level0.Indo_European")) == ["level1.Germanic", "level1.Romance"]
    assert names(tree.children_of("level1.Germanic")) == [
        "level2.High_German", "level2.North_Sea_Germanic", "level2.Weser_Rhine_Germanic"]
    assert names(tree.children_of("level1.Romance")) == [
        "level2.Italo_Romance", "level2.Iberian_Romance", "level2.Gallo_Romance"]
    assert names(tree.children_of("level2.North_Sea_Germanic")) == [
        "language.English", "language.Tok_Pisin"]
    assert tree.nodes["level2.Gallo_Romance"].languages == [
        Language("fra_Latn", "French"), Language("hat_Latn", "Haitian_Creole")]
    assert tree.nodes["level1.Germanic"].codes == [
        "deu_Latn", "ltz_Latn", "eng_Latn", "tpi_Latn", "nld_Latn", "lim_Latn"]
    assert len(tree.nodes["level0.Indo_European"].languages) == 12
    leaf = tree.nodes["language.Tok_Pisin"]
    assert (leaf.name, leaf.level, leaf.depth, leaf.parent, leaf.children) == (
        "Tok_Pisin", "language", 3, "level2.North_Sea_Germanic", [])
    assert leaf.languages == [Language("tpi_Latn", "Tok_Pisin")]


def test_pthql_order_ancestors_leaves():
    tree = load_tree(FILES / "12langs_pthql.csv", ALL4)
    depths = [node.depth for node in tree.nodes.values()]
    assert depths == sorted(depths)  # parents before children
    assert names(tree.ancestors("language.Asturian")) == [
        "level0.Indo_European", "level1.Romance", "level2.Iberian_Romance"]
    assert tree.ancestors("level0.Indo_European") == []
    assert len(tree.leaves()) == 12
    assert all(len(leaf.languages) == 1 for leaf in tree.leaves())
    assert tree.leaf_for("hat_Latn").id == "language.Haitian_Creole"
    assert tree.language_name("tpi_Latn") == "Tok_Pisin"
    assert tree.summary() == "21 nodes, 4 levels, 12 languages"


def test_dlhql_tree_structure():
    tree = load_tree(FILES / "12langs_dlhql.csv", ALL4)
    assert len(tree.nodes) == 21
    assert names(tree.children_of("level0.Indo_European")) == ["level1.level1_0", "level1.level1_1"]
    assert names(tree.children_of("level1.level1_0")) == [
        "level2.level2_0", "level2.level2_1", "level2.level2_2"]
    assert names(tree.children_of("level1.level1_1")) == [
        "level2.level2_3", "level2.level2_4", "level2.level2_5"]
    pairs = {n.name: n.codes for n in tree.nodes_at_depth(2)}
    assert pairs == {
        "level2_0": ["deu_Latn", "ast_Latn"], "level2_1": ["ita_Latn", "tpi_Latn"],
        "level2_2": ["fra_Latn", "lim_Latn"], "level2_3": ["eng_Latn", "scn_Latn"],
        "level2_4": ["spa_Latn", "ltz_Latn"], "level2_5": ["nld_Latn", "hat_Latn"]}
    assert tree.nodes["language.Luxembourgish"].parent == "level2.level2_4"


def test_trees_agree_on_languages():
    pthql = load_tree(FILES / "12langs_pthql.csv")
    dlhql = load_tree(FILES / "12langs_dlhql.csv")
    multi = load_tree(FILES / "12langs.csv")
    assert sorted(pthql.languages, key=lambda l: l.code) == sorted(dlhql.languages, key=lambda l: l.code)
    assert multi.languages == pthql.languages
    assert sorted(lang.code[:3] for lang in multi.languages) == CODES


def test_multilingual_one_node():
    tree = load_tree(FILES / "12langs.csv", ["level0"])
    assert list(tree.nodes) == ["level0.Indo_European"]
    root = tree.nodes["level0.Indo_European"]
    assert len(root.languages) == 12 and root.children == [] and root.parent is None
    assert tree.leaves() == [root]
    assert tree.leaf_for("eng_Latn") is root
    assert tree.summary() == "1 node, 1 level, 12 languages"
    # the same file also works with all levels
    assert len(load_tree(FILES / "12langs.csv", ALL4).nodes) == 21


@pytest.mark.parametrize("iso", CODES)
def test_monolingual_files(iso):
    assert level_columns(FILES / f"{iso}.csv") == ALL4
    tree = load_tree(FILES / f"{iso}.csv", ["language"])
    assert len(tree.nodes) == 1 and len(tree.languages) == 1
    lang = tree.languages[0]
    assert lang.code == f"{iso}_Latn"
    node = tree.nodes[tree.roots[0]]
    assert node.id == f"language.{lang.name}" and node.languages == [lang]
    # the row is the PTHQL row of that language
    pthql = load_tree(FILES / "12langs_pthql.csv")
    assert names(pthql.ancestors(node.id)) == names(load_tree(FILES / f"{iso}.csv").ancestors(node.id))


# The original repository's language_files/deu.csv (every per-language file upstream is this one list).
ORIGINAL_DEU = """code,language
deu_Latn,German
ltz_Latn,Luxembourgish
eng_Latn,English
tpi_Latn,Tok_Pisin
nld_Latn,Dutch
lim_Latn,Limburgish
ita_Latn,Italian
scn_Latn,Sicilian
spa_Latn,Spanish
ast_Latn,Asturian
fra_Latn,French
hat_Latn,Haitian_Creole
"""


@pytest.mark.parametrize("levels", [["language"], ['"language"'], None])
def test_the_originals_per_language_file_trains_12_monolingual_models(tmp_path, levels):
    """`-ln language` on the original's file: every row a leaf trained alone, no parent."""
    tree = load_tree(write(tmp_path, ORIGINAL_DEU, "deu.csv"), levels)
    assert level_columns(tmp_path / "deu.csv") == ["language"]
    assert len(tree.nodes) == 12 and tree.levels == ["language"]
    assert tree.roots == list(tree.nodes) and all(node.is_leaf for node in tree.nodes.values())
    assert [(n.id, n.codes) for n in list(tree.nodes.values())[:2]] == [
        ("language.German", ["deu_Latn"]), ("language.Luxembourgish", ["ltz_Latn"])]
    assert tree.leaf_for("hat_Latn").name == "Haitian_Creole"


def test_ast_names():
    tree = load_tree(FILES / "ast.csv", ["language"])
    assert list(tree.nodes) == ["language.Asturian"]
    assert tree.summary() == "1 node, 1 level, 1 language"


# --- level choice ----------------------------------------------------------------------------

def test_default_levels_all_columns_language_last(tmp_path):
    path = write(tmp_path, "language,code,family,branch\nGerman,deu_Latn,IE,Germanic\n")
    assert level_columns(path) == ["language", "family", "branch"]
    assert load_tree(path).levels == ["family", "branch", "language"]


def test_level_subset_skips_levels():
    tree = load_tree(FILES / "12langs_pthql.csv", ["level0", "language"])
    assert len(tree.nodes) == 13
    assert len(tree.children_of("level0.Indo_European")) == 12
    assert tree.nodes["language.German"].parent == "level0.Indo_European"


def test_forest_several_roots():
    tree = load_tree(FILES / "12langs_pthql.csv", ["level1", "level2"])
    assert tree.roots == ["level1.Germanic", "level1.Romance"]
    assert len(tree.nodes) == 8
    assert tree.leaf_for("lim_Latn").id == "level2.Weser_Rhine_Germanic"
    assert tree.summary() == "8 nodes, 2 levels, 12 languages"
    text = tree.render()
    assert text.splitlines()[0].startswith("level1.Germanic")
    assert any(line.startswith("level1.Romance") for line in text.splitlines())


def test_arbitrary_column_names(tmp_path):
    path = write(tmp_path, (
        "code,family,branch,language\n"
        "aaa_Latn,Fam,Left,Alpha\n"
        "\n"
        "bbb_Latn,Fam,Left,Beta\n"
        "ccc_Latn,Fam,Right,Gamma\n"
        "ddd_Latn,Other,Solo,Delta\n"))
    tree = load_tree(path, ["family", "branch", "language"])
    assert tree.roots == ["family.Fam", "family.Other"]
    assert names(tree.children_of("family.Fam")) == ["branch.Left", "branch.Right"]
    assert tree.nodes["branch.Left"].codes == ["aaa_Latn", "bbb_Latn"]
    assert names(tree.ancestors("language.Gamma")) == ["family.Fam", "branch.Right"]
    assert load_tree(path, ["branch"]).roots == ["branch.Left", "branch.Right", "branch.Solo"]


def test_unsafe_values_give_filename_safe_ids(tmp_path):
    path = write(tmp_path, "code,group,language\nx_Latn,West / North,Tok Pisin\n")
    tree = load_tree(path)
    assert list(tree.nodes) == ["group.West___North", "language.Tok_Pisin"]
    assert tree.nodes["language.Tok_Pisin"].name == "Tok Pisin"


def test_cells_are_stripped_and_bom_ignored(tmp_path):
    path = tmp_path / "bom.csv"
    path.write_text("\ufeffcode, level0 ,language\r\n deu_Latn , IE , German \r\n", encoding="utf-8")
    tree = load_tree(path, ["level0", "language"])
    assert list(tree.nodes) == ["level0.IE", "language.German"]
    assert tree.languages == [Language("deu_Latn", "German")]


@pytest.mark.parametrize("values", [
    ["level0,", "level1,", "language"],
    ['"level0",', '"level1",', '"language"'],
    ["level0,level1,language"],
    ["level0", "level1", "language"],
    ["level0, level1", "language"],
    "level0,level1,language",
])
def test_parse_level_args(values):
    assert parse_level_args(values) == ["level0", "level1", "language"]


def test_load_tree_accepts_original_spelling():
    tree = load_tree(FILES / "12langs_pthql.csv", ["level0,", "level1,", "level2,", "language"])
    assert len(tree.nodes) == 21


def test_to_dict_round_trip():
    tree = load_tree(FILES / "12langs_dlhql.csv", ALL4)
    data = tree.to_dict()
    again = LanguageTree.from_dict(json.loads(json.dumps(data)))
    assert again.to_dict() == data
    assert list(again.nodes) == list(tree.nodes)
    assert again.roots == tree.roots and again.levels == tree.levels
    assert again.nodes["level2.level2_1"] == tree.nodes["level2.level2_1"]
    assert again.render() == tree.render()


def test_render_counts_by_code_and_by_node():
    tree = load_tree(FILES / "12langs_pthql.csv", ALL4)
    counts = {lang.code: 1000 for lang in tree.languages}
    counts["deu_Latn"] = 2500
    lines = tree.render(counts).splitlines()
    assert len(lines) == 21
    assert lines[0].startswith("level0.Indo_European") and lines[0].endswith("(13,500 examples)")
    high = next(line for line in lines if "level2.High_German" in line)
    assert "deu_Latn German, ltz_Latn Luxembourgish" in high and high.endswith("(3,500 examples)")
    by_node = tree.render({"level1.Romance": 7})
    assert "(7 examples)" in by_node and by_node.count("examples") == 1


# --- CLI -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["12langs_pthql.csv", "12langs_dlhql.csv"])
def test_cli_hierarchical(name, capsys):
    assert main(["tree", str(FILES / name), "-ln", "level0,", "level1,", "level2,", "language"]) == 0
    out = capsys.readouterr().out
    assert out.strip().splitlines()[-1] == "21 nodes, 4 levels, 12 languages"
    assert "language.Tok_Pisin  [tpi_Latn Tok_Pisin]" in out
    assert "level0 > level1 > level2 > language" in out


def test_cli_monolingual_and_default_levels(capsys):
    assert main(["tree", str(FILES / "ast.csv"), "-ln", "language"]) == 0
    out = capsys.readouterr().out
    assert "language.Asturian  [ast_Latn Asturian]" in out
    assert out.strip().endswith("1 node, 1 level, 1 language")
    assert main(["tree", str(FILES / "12langs.csv")]) == 0
    assert "21 nodes, 4 levels, 12 languages" in capsys.readouterr().out


def make_data(root: Path) -> None:
    """Two corpora in the original layout; counts are non-blank lines."""
    for corpus, code, n in [("amr3", "deu_Latn", 3), ("flores", "deu_Latn", 2),
                            ("amr3", "ltz_Latn", 4), ("amr3", "eng_Latn", 1)]:
        folder = root / corpus / code
        folder.mkdir(parents=True)
        lines = "".join(f"(a / amr-{i})\tsentence {i}\n" for i in range(n))
        (folder / f"{corpus}_{code}_train.tsv").write_text(lines + "\n", encoding="utf-8")


def test_cli_counts(tmp_path, capsys):
    make_data(tmp_path / "data")
    argv = ["tree", str(FILES / "12langs_pthql.csv"), "-ln", "level0", "level2", "language",
            "--data-dir", str(tmp_path / "data")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    root_line = next(line for line in out.splitlines() if line.startswith("level0.Indo_European"))
    assert root_line.endswith("(10 examples)")
    assert "level2.High_German  [deu_Latn German, ltz_Latn Luxembourgish]  (9 examples)" in out
    assert "language.German  [deu_Latn German]  (5 examples)" in out
    assert "10 train examples" in out and "warning: no train examples for tpi_Latn" in out
    assert "9 nodes, 3 levels, 12 languages" in out
    assert main(argv + ["--corpus", "amr3"]) == 0
    out = capsys.readouterr().out
    assert "language.German  [deu_Latn German]  (3 examples)" in out


def test_cli_bad_input_exit_2(tmp_path, capsys):
    assert main(["tree", str(FILES / "ast.csv"), "-ln", "level9"]) == 2
    err = capsys.readouterr().err
    assert "ast.csv:1: unknown level 'level9'" in err and "Traceback" not in err
    assert main(["tree", str(FILES / "ast.csv"), "--data-dir", str(tmp_path / "none")]) == 2
    assert "data folder not found" in capsys.readouterr().err


# --- bad input: each names file, line and problem --------------------------------------------

def error_of(path: Path, levels=None) -> InputError:
    with pytest.raises(InputError) as info:
        load_tree(path, levels)
    return info.value


def test_unknown_level_lists_available(tmp_path):
    path = write(tmp_path, HEADER + "deu_Latn,IE,Germanic,High_German,German\n")
    err = error_of(path, ["level0", "leve1"])
    assert (err.path, err.line) == (str(path), 1)
    assert "unknown level 'leve1'" in str(err)
    assert "available: level0, level1, level2, language" in str(err)
    assert str(err).startswith(f"{path}:1: ")
    assert "'code'" not in str(error_of(path, ["code"])).split("available")[1]


def test_no_level_and_repeated_level_and_language_not_last(tmp_path):
    path = write(tmp_path, HEADER + "deu_Latn,IE,Germanic,High_German,German\n")
    assert "no level chosen" in str(error_of(path, []))
    assert "level 'level0' is chosen twice" in str(error_of(path, ["level0", "level0"]))
    err = error_of(path, ["language", "level0"])
    assert err.line == 1 and "'language' must come last" in str(err)


@pytest.mark.parametrize("column", ["code", "language"])
def test_missing_required_column(tmp_path, column):
    header = [c for c in ["code", "level0", "language"] if c != column]
    path = write(tmp_path, ",".join(header) + "\n" + ",".join("x" * len(header)) + "\n")
    err = error_of(path)
    assert (err.path, err.line) == (str(path), 1)
    assert f"missing column '{column}'" in str(err)


def test_header_problems(tmp_path):
    path = write(tmp_path, "code,level0,level0,language\nx,a,a,X\n")
    err = error_of(path)
    assert err.line == 1 and "column 'level0' appears twice" in str(err)
    path = write(tmp_path, "code,,language\nx,a,X\n", "blank_col.csv")
    assert "column 2 of the header has no name" in str(error_of(path))


def test_duplicate_code(tmp_path):
    path = write(tmp_path, HEADER
                 + "deu_Latn,IE,Germanic,High_German,German\n"
                 + "\n"
                 + "deu_Latn,IE,Germanic,High_German,Deutsch\n")
    err = error_of(path)
    assert (err.path, err.line) == (str(path), 4)
    assert "duplicate code 'deu_Latn' (first on line 2)" in str(err)


def test_duplicate_language_name(tmp_path):
    path = write(tmp_path, HEADER
                 + "deu_Latn,IE,Germanic,High_German,German\n"
                 + "gsw_Latn,IE,Germanic,High_German,German\n")
    err = error_of(path)
    assert err.line == 3 and "language name 'German' of gsw_Latn is already used by deu_Latn on line 2" in str(err)


def test_group_under_two_parents(tmp_path):
    path = write(tmp_path, HEADER
                 + "deu_Latn,IE,Germanic,High_German,German\n"
                 + "eng_Latn,IE,Germanic,North_Sea,English\n"
                 + "ltz_Latn,IE,Romance,High_German,Luxembourgish\n")
    err = error_of(path, ALL4)
    assert (err.path, err.line) == (str(path), 4)
    msg = str(err)
    assert "level2 'High_German' is under level1 'Romance' here" in msg
    assert "under level1 'Germanic' on line 2" in msg
    # not a problem when level1 is not chosen
    assert len(load_tree(path, ["level0", "level2"]).nodes) == 3


def test_reversed_levels_are_two_parents(tmp_path):
    err = error_of(FILES / "12langs_pthql.csv", ["level1", "level0"])
    assert err.line == 8 and "level0 'Indo_European' is under level1 'Romance'" in str(err)
    assert "on line 2" in str(err)


@pytest.mark.parametrize("row, level", [
    ("deu_Latn,IE,,High_German,German", "level1"),
    ("deu_Latn,,Germanic,High_German,German", "level0"),
])
def test_empty_cell_in_chosen_level(tmp_path, row, level):
    path = write(tmp_path, HEADER + "eng_Latn,IE,Germanic,North,English\n" + row + "\n")
    err = error_of(path, ALL4)
    assert (err.path, err.line) == (str(path), 3)
    assert f"empty cell in level '{level}' for deu_Latn" in str(err)


def test_empty_cell_in_unchosen_level_is_fine(tmp_path):
    path = write(tmp_path, HEADER + "deu_Latn,IE,,,German\n")
    assert list(load_tree(path, ["level0", "language"]).nodes) == ["level0.IE", "language.German"]


def test_empty_code_and_language_cells(tmp_path):
    path = write(tmp_path, HEADER + ",IE,Germanic,High_German,German\n")
    err = error_of(path)
    assert err.line == 2 and "empty 'code' cell" in str(err)
    path = write(tmp_path, HEADER + "deu_Latn,IE,Germanic,High_German,\n", "nolang.csv")
    err = error_of(path)
    assert err.line == 2 and "empty 'language' cell for deu_Latn" in str(err)
    path = write(tmp_path, HEADER + "de/u,IE,Germanic,High_German,German\n", "badcode.csv")
    assert "code 'de/u' is not a language code" in str(error_of(path))


@pytest.mark.parametrize("row, cells", [
    ("deu_Latn,IE,Germanic,German", 4),
    ("deu_Latn,IE,Germanic,High_German,German,", 6),
])
def test_wrong_number_of_cells(tmp_path, row, cells):
    path = write(tmp_path, HEADER + "\n\n" + row + "\n")
    err = error_of(path)
    assert (err.path, err.line) == (str(path), 4)
    assert f"{cells} cells, expected 5 (code,level0,level1,level2,language)" in str(err)


def test_multiline_quoted_cell_keeps_line_numbers(tmp_path):
    path = write(tmp_path, HEADER + 'deu_Latn,IE,"Germ\nanic",High_German,German\n'
                 + "deu_Latn,IE,Germanic,High_German,Other\n")
    err = error_of(path)
    assert err.line == 4 and "first on line 2" in str(err)


@pytest.mark.parametrize("text", ["", "\n\n  \n"])
def test_empty_file(tmp_path, text):
    path = write(tmp_path, text)
    err = error_of(path)
    assert err.path == str(path) and "empty file" in str(err)


def test_header_only(tmp_path):
    path = write(tmp_path, HEADER)
    err = error_of(path)
    assert err.line == 1 and "no languages" in str(err)


def test_missing_file_and_directory(tmp_path):
    err = error_of(tmp_path / "nope.csv")
    assert err.path == str(tmp_path / "nope.csv") and "not found" in str(err)
    assert "is a directory" in str(error_of(tmp_path))
    with pytest.raises(InputError, match="nope.csv: tree file not found"):
        level_columns(tmp_path / "nope.csv")


def test_not_utf8(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes((HEADER + "deu_Latn,IE,Germanic,High_German,Deutsch\xe9\n").encode("latin-1"))
    assert "not UTF-8" in str(error_of(path))


def test_unknown_code_and_node(tmp_path):
    tree = load_tree(FILES / "12langs_pthql.csv")
    with pytest.raises(InputError, match="'xxx_Latn' is not in the tree"):
        tree.leaf_for("xxx_Latn")
    with pytest.raises(InputError, match="no node 'level1.Slavic'"):
        tree.children_of("level1.Slavic")


def test_id_clash_after_sanitizing(tmp_path):
    path = write(tmp_path, "code,group,language\na_Latn,A B,Alpha\nb_Latn,A/B,Beta\n")
    err = error_of(path)
    assert err.line == 3 and "both become node id 'group.A_B'" in str(err)


# --- tree.skip (-sv) ----------------------------------------------------------------------------

def test_skip_values_name_nodes_by_value_id_or_code():
    tree = load_tree(FILES / "12langs_pthql.csv", ALL4)
    skipped = tree.skip_nodes(["Indo_European", "level1.Germanic", "eng_Latn", "Spanish"])
    assert skipped == {"level0.Indo_European", "level1.Germanic", "language.English", "language.Spanish"}
    # the root and Germanic have nodes below them that train; the skipped leaves do not
    assert tree.needed_skips(skipped) == ["level0.Indo_European", "level1.Germanic"]
    # a branch skipped to its leaves needs nothing from the run folder
    germanic = {n for n in tree.nodes if n == "level1.Germanic" or "level1.Germanic" in names(tree.ancestors(n))}
    assert len(germanic) == 10 and tree.needed_skips(germanic) == []
    assert tree.skip_nodes([]) == set()


def test_unknown_skip_value_lists_the_valid_ones():
    tree = load_tree(FILES / "12langs.csv", ["level0", "language"])
    with pytest.raises(ConfigError) as err:
        tree.skip_nodes(["Germanic"])
    assert "tree.skip (-sv): no node 'Germanic'" in err.value.problem
    assert "valid values: Indo_European, German, Luxembourgish, English" in err.value.problem
