"""AMR reading (penman, made strict) and one-line linearization."""

from __future__ import annotations

import penman
import pytest

from hql_ray.data.amr import (
    LinearizeOptions,
    linearize,
    parse_amr,
    parse_amr_tree,
    read_penman_blocks,
)
from hql_ray.settings.errors import InputError

WANT = "(w / want-01 :ARG0 (b / boy) :ARG1 (g / go-02 :ARG0 b))"
OBAMA = '(s / say-01 :ARG0 (p / person :wiki "Barack_Obama" :name (n / name :op1 "Obama")) :ARG1 (g / go-02 :ARG0 p))'

MULTI = """\
# AMR release (a file header: comments only, no graph)

# ::id t.1 ::date 2012-06-07 ::annotator A
# ::snt The boy wants to go.
(w / want-01
   :ARG0 (b / boy)
   :ARG1 (g / go-02
            :ARG0 b))

# ::id t.2
# ::snt Obama said: he goes :: now.
(s / say-01
   :ARG0 (p / person :wiki "Barack_Obama"
            :name (n / name :op1 "Obama"))
   :ARG1 (g / go-02 :ARG0 p))
"""


def test_default_is_the_original_single_line_format():
    assert linearize(WANT) == WANT
    assert linearize(parse_amr(WANT)) == WANT
    assert linearize(OBAMA) == OBAMA


def test_drop_wiki():
    out = linearize(OBAMA, LinearizeOptions(keep_wiki=False))
    assert out == '(s / say-01 :ARG0 (p / person :name (n / name :op1 "Obama")) :ARG1 (g / go-02 :ARG0 p))'
    # :wiki - (no page) goes too
    assert linearize("(c / city :wiki - :name (n / name :op1 \"X\"))", LinearizeOptions(keep_wiki=False)) == (
        '(c / city :name (n / name :op1 "X"))'
    )


def test_drop_senses():
    out = linearize(WANT, LinearizeOptions(keep_senses=False))
    assert out == "(w / want :ARG0 (b / boy) :ARG1 (g / go :ARG0 b))"
    # a sense on a multi-word concept, a string constant that looks like one stays
    assert linearize('(h / have-org-role-91 :ARG1 (n / name :op1 "F-16"))', LinearizeOptions(keep_senses=False)) == (
        '(h / have-org-role :ARG1 (n / name :op1 "F-16"))'
    )


def test_drop_variables_turns_reentrancy_into_the_concept():
    out = linearize(WANT, LinearizeOptions(keep_variables=False))
    assert out == "(want-01 :ARG0 boy :ARG1 (go-02 :ARG0 boy))"
    out = linearize(OBAMA, LinearizeOptions(keep_variables=False))
    assert out == '(say-01 :ARG0 (person :wiki "Barack_Obama" :name (name :op1 "Obama")) :ARG1 (go-02 :ARG0 person))'
    # a lone root keeps its parentheses
    assert linearize("(b / boy)", LinearizeOptions(keep_variables=False)) == "(boy)"


def test_all_options_off():
    out = linearize(OBAMA, LinearizeOptions(keep_wiki=False, keep_variables=False, keep_senses=False))
    assert out == '(say :ARG0 (person :name (name :op1 "Obama")) :ARG1 (go :ARG0 person))'


def test_linearize_clears_metadata_and_keeps_it_on_the_graph():
    g = penman.decode("# ::snt The boy.\n(b / boy)")
    assert g.metadata == {"snt": "The boy."}
    assert linearize(g) == "(b / boy)"
    assert g.metadata == {"snt": "The boy."}


def test_read_penman_blocks_multi_line(tmp_path):
    path = tmp_path / "amr.txt"
    path.write_text(MULTI, encoding="utf-8")
    entries, skipped = read_penman_blocks(path)
    assert [line for _, _, line in entries] == [3, 10] and skipped == 0
    assert entries[0][1] == {"id": "t.1", "date": "2012-06-07", "annotator": "A", "snt": "The boy wants to go."}
    assert entries[1][1]["snt"] == "Obama said: he goes :: now."
    assert linearize(entries[0][0]) == WANT
    assert linearize(entries[1][0]) == OBAMA
    assert linearize(entries[1][0], LinearizeOptions(keep_wiki=False, keep_variables=False)) == (
        '(say-01 :ARG0 (person :name (name :op1 "Obama")) :ARG1 (go-02 :ARG0 person))'
    )


def test_malformed_block_names_file_and_block_line(tmp_path):
    bad = MULTI.replace("   :ARG1 (g / go-02 :ARG0 p))", "   :ARG1 (g / go-02 :ARG0 p)")
    path = tmp_path / "bad.txt"
    path.write_text(bad, encoding="utf-8")
    with pytest.raises(InputError) as err:
        read_penman_blocks(path)
    assert err.value.path == str(path)
    assert err.value.line == 10
    assert "unbalanced parentheses" in err.value.problem
    assert str(err.value).startswith(f"{path}:10: malformed AMR")
    bad_blocks = []
    entries, skipped = read_penman_blocks(path, skip_bad=True, on_bad=bad_blocks.append)
    assert [meta["id"] for _, meta, _ in entries] == ["t.1"] and skipped == 1
    assert [(e.line, str(e.path)) for e in bad_blocks] == [(10, str(path))]


def test_error_inside_a_block_names_the_file_line(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_text("# ::id x\n(a / b\n   :ARG0 (c / d \"junk\"))\n", encoding="utf-8")
    with pytest.raises(InputError) as err:
        read_penman_blocks(path)
    assert err.value.line == 1
    assert "Expected: ROLE (line 3, character" in err.value.problem


@pytest.mark.parametrize(
    "text, problem",
    [
        ("", "empty AMR"),
        ("   ", "empty AMR"),
        ("(a / b", "unbalanced parentheses: a ')' is missing"),
        ("(a / b :ARG0 (c / d)", "unbalanced parentheses: a ')' is missing"),
        ("(a / b))", "unbalanced parentheses: an extra ')'"),
        ("(a / b) (c / d)", "unexpected text after the graph"),
        ("garbage", "Expected: LPAREN"),
        ("(a)", "node a has no concept"),
        ("(a / b :ARG0)", "role :ARG0 of node a has no target"),
        ("(a / b :ARG0 (a / c))", "variable a is defined twice"),
    ],
)
def test_parse_amr_rejects_malformed(text, problem):
    with pytest.raises(InputError) as err:
        parse_amr(text, path="x.tsv", line=7)
    assert err.value.path == "x.tsv" and err.value.line == 7
    assert problem in err.value.problem
    assert str(err.value).startswith("x.tsv:7: ")


def test_parse_amr_tree_reports_character():
    with pytest.raises(InputError) as err:
        parse_amr_tree("(a / b))")
    assert "(character 8)" in err.value.problem
