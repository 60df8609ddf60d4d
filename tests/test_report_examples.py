"""`hql-ray report --examples N` (issue 13): N source/hypothesis/reference triples per language and test set at
the leaves, read from the line-aligned files evaluation writes; the manifest's samples when the files are not here."""

from __future__ import annotations

import json

import pytest

from hql_ray.cli import main
from hql_ray.scoring.evaluation import GeneratedTexts, write_node_texts
from hql_ray.settings.records import Sample, TestSetScores
from hql_ray.outputs.report import load_run, read_examples, write_report
from test_report import SCORES_A, TREE, write_run

LEAVES = {"deu_Latn": "language.German", "nld_Latn": "language.Dutch", "ita_Latn": "language.Italian"}


def texts(code: str, test_set: str, n: int = 6) -> dict:
    return {"sources": [f"Translate to {code}: (s{i} / sent-{i}\n :mod x)" for i in range(n)],
            "hypotheses": [f"hyp {code} {test_set} {i}" for i in range(n)],
            "references": [f"ref {code} {test_set} {i}" for i in range(n)]}


@pytest.fixture()
def run_dir(tmp_path):
    """The report tests' 3-leaf run, its leaves' texts written by the evaluation's own writer (which also puts
    the folder in each score record), except Italian's: another host wrote them, only the manifest's samples here."""
    tree = tmp_path / "tree.csv"
    tree.write_text(TREE)
    run = write_run(tmp_path / "out", "pthql", tree, SCORES_A)
    manifest = json.loads((run / "manifest.json").read_text())
    for code, leaf in LEAVES.items():
        per_set = manifest["nodes"][leaf]["metrics"]["languages"][code]
        for record in per_set.values():
            record["samples"] = [{"source": "s0", "hypothesis": f"sample hyp {code}", "reference": "r0"}]
        if code == "ita_Latn":
            for record in per_set.values():
                record["texts"] = {"dir": f"evaluation/{leaf}/{code}/flores", "host": "gpu-node-7"}
        else:
            scores = {name: TestSetScores.from_json(record) for name, record in per_set.items()}
            write_node_texts(run, f"evaluation/{leaf}", code, scores,
                             {name: GeneratedTexts(**texts(code, name)) for name in per_set})
            per_set.update({name: s.to_json() for name, s in scores.items()})
    (run / "manifest.json").write_text(json.dumps(manifest))
    return run


def test_read_examples_takes_the_first_lines_of_the_leafs_files(run_dir):
    run = load_run(run_dir)
    got = read_examples(run, "language.German", "deu_Latn", "ldc2020t07", 2)
    assert got.where == "evaluation/language.German/deu_Latn/ldc2020t07" and got.note is None
    assert got.examples == [
        Sample("Translate to deu_Latn: (s0 / sent-0  :mod x)", "hyp deu_Latn ldc2020t07 0", "ref deu_Latn ldc2020t07 0"),
        Sample("Translate to deu_Latn: (s1 / sent-1  :mod x)", "hyp deu_Latn ldc2020t07 1", "ref deu_Latn ldc2020t07 1")]
    assert len(read_examples(run, "language.German", "deu_Latn", "flores", 100).examples) == 6  # all there are


def test_without_the_files_the_manifest_samples_are_shown_and_why(run_dir):
    got = read_examples(load_run(run_dir), "language.Italian", "ita_Latn", "flores", 3)
    assert got.where == "manifest" and "written on gpu-node-7" in got.note
    assert got.examples == [Sample("s0", "sample hyp ita_Latn", "r0")]


def test_report_examples_section_per_language_and_test_set(run_dir, capsys):
    assert main(["report", str(run_dir), "--no-plots", "--examples", "2"]) == 0
    out = capsys.readouterr().out
    md = (run_dir / "report.md").read_text()
    assert "## Examples" in md and "## Examples" in out
    section = md[md.index("## Examples"):]
    headings = [line for line in section.splitlines() if line.startswith("### ")]
    assert headings == ["### deu_Latn (German), flores, node language.German",
                        "### deu_Latn (German), ldc2020t07, node language.German",
                        "### nld_Latn (Dutch), flores, node language.Dutch",
                        "### ita_Latn (Italian), flores, node language.Italian"]
    german = section[section.index("### deu_Latn (German), flores"):section.index("### deu_Latn (German), ldc")]
    assert "From `evaluation/language.German/deu_Latn/flores/`." in german
    assert "1. source: Translate to deu_Latn: (s0 / sent-0 :mod x)" in german
    assert "   hypothesis: hyp deu_Latn flores 1" in german and "   reference: ref deu_Latn flores 1" in german
    assert "hyp deu_Latn flores 2" not in german  # N = 2
    assert "written on gpu-node-7" in section and "hypothesis: sample hyp ita_Latn" in section


def test_no_examples_by_default_and_a_negative_count_is_refused(run_dir, capsys):
    assert "## Examples" not in write_report([run_dir], with_plots=False)["markdown"]
    assert main(["report", str(run_dir), "--no-plots", "--examples", "-1"]) != 0
    assert "--examples must be 0 or more" in capsys.readouterr().err
