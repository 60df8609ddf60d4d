"""hql-ray report on hand-made run records: tables, best marks, CSV, PNGs, root-to-leaf, failed nodes."""

from __future__ import annotations

import csv
import io
import json
import struct
from pathlib import Path

import pytest

from hql_ray.cli import main
from hql_ray.settings.errors import InputError
from hql_ray.outputs.plots import timeline_lanes
from hql_ray.outputs.report import load_run, write_report
from hql_ray.outputs.results import path_scores, score_rows

TREE = """code,level0,level1,language
deu_Latn,Indo_European,Germanic,German
nld_Latn,Indo_European,Germanic,Dutch
ita_Latn,Indo_European,Romance,Italian
"""
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
T0 = 1_700_000_000.0


NO_LID = "no LID model (eval.lid_model is not set)"
BLEU_SIG = "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0"


def record(bleu, chrf, n=10):
    """One test set's scores as evaluation.evaluate_language writes them (spBLEU = bleu, BLEU 13a = bleu / 2)."""
    return {"n": n, "spbleu": bleu, "bleu_13a": bleu / 2, "chrf++": chrf, "lid": None, "lid_diff": None,
            "reference_lid": None, "signatures": {"bleu_13a": BLEU_SIG, "spbleu": BLEU_SIG.replace("13a", "flores200")},
            "not_computed": {"lid": NO_LID, "lid_diff": NO_LID}, "clipped": 0}


def scores(bleu, chrf, n=10):
    return {"flores": record(bleu, chrf, n)}


def node(nid, name, level, depth, parent, children, langs, *, start, end, status="done", lang_scores=None,
         gpu_ids=None, workers=1, steps=10, error=None):
    hist = [{"step": 0, "val_loss": 5.0 - depth}, {"step": steps // 2, "train_loss": 4.5 - depth, "val_loss": 4.2 - depth},
            {"step": steps, "train_loss": 4.0 - depth, "val_loss": 3.9 - depth}]
    entry = {
        "id": nid, "name": name, "level": level, "depth": depth, "parent": parent, "children": children,
        "languages": langs, "status": status, "started_at": T0 + start if start is not None else None,
        "finished_at": T0 + end if end is not None else None,
        "resources": {"workers": workers, "gpu": gpu_ids is not None, "gpu_ids": gpu_ids or [], "hosts": ["10.0.0.1"]},
        "attempts": 1, "adapter": f"nodes/{nid}/adapter" if status == "done" else None,
        "metrics": None, "history": hist if status == "done" else None,
    }
    if status == "done":
        entry["metrics"] = {"initial_val_loss": 6.0, "val_loss": 3.9 - depth, "train_loss": 4.0 - depth,
                            "steps": steps, "train_seconds": float(end - start), "languages": lang_scores or {}}
    if error:
        entry["error"] = error
    return entry


def write_run(root: Path, name: str, tree_file: Path, s: dict, *, gpu=False, fail_dutch=False) -> Path:
    """A 3-level run (root, 2 groups, 3 leaves); `s` = {code: (bleu, chrf) per depth 0,1,2}."""
    gids = (lambda ids: ids) if gpu else (lambda ids: None)
    codes = ["deu_Latn", "nld_Latn", "ita_Latn"]
    nodes = {
        "level0.Indo_European": node("level0.Indo_European", "Indo_European", "level0", 0, None,
                                     ["level1.Germanic", "level1.Romance"], codes, start=0, end=100,
                                     lang_scores={c: scores(*s[c][0]) for c in codes}, gpu_ids=gids(["0", "1"]),
                                     workers=2),
        "level1.Germanic": node("level1.Germanic", "Germanic", "level1", 1, "level0.Indo_European",
                                ["language.German", "language.Dutch"], codes[:2], start=100, end=160,
                                lang_scores={c: scores(*s[c][1]) for c in codes[:2]}, gpu_ids=gids(["0"])),
        "level1.Romance": node("level1.Romance", "Romance", "level1", 1, "level0.Indo_European",
                               ["language.Italian"], codes[2:], start=100, end=150,
                               lang_scores={"ita_Latn": scores(*s["ita_Latn"][1])}, gpu_ids=gids(["1"])),
        "language.German": node("language.German", "German", "language", 2, "level1.Germanic", [], ["deu_Latn"],
                                start=160, end=190, lang_scores={"deu_Latn": {**scores(*s["deu_Latn"][2]),
                                                                              "ldc2020t07": record(*s["ldc"], n=3)}},
                                gpu_ids=gids(["0"])),
        "language.Dutch": node("language.Dutch", "Dutch", "language", 2, "level1.Germanic", [], ["nld_Latn"],
                               start=160, end=170 if fail_dutch else 200, status="failed" if fail_dutch else "done",
                               lang_scores={"nld_Latn": scores(*s["nld_Latn"][2])},
                               gpu_ids=None if fail_dutch else gids(["1"]),
                               error="WorkerGroupError: ...\nRuntimeError: CUDA out of memory" if fail_dutch else None),
        "language.Italian": node("language.Italian", "Italian", "language", 2, "level1.Romance", [], ["ita_Latn"],
                                 start=150, end=175, lang_scores={"ita_Latn": scores(*s["ita_Latn"][2])},
                                 gpu_ids=gids(["1"])),
    }
    run_dir = root / name
    run_dir.mkdir(parents=True)
    manifest = {
        "run": name, "created_at": T0, "updated_at": T0 + 200, "status": "failed" if fail_dutch else "done",
        "tree": {"file": str(tree_file), "levels": ["level0", "level1", "language"]},
        "config": {"model": {"base": "tiny", "mode": "qlora"}, "eval": {"at_nodes": "all"}},
        "nodes": nodes, "slots": {"total": 2, "gpu": gpu, "cuda": False}, "finished_at": T0 + 200,
    }
    (run_dir / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return run_dir


SCORES_A = {"deu_Latn": [(1.0, 10.0), (2.0, 20.0), (3.0, 30.0)],
            "nld_Latn": [(1.5, 11.0), (2.5, 21.0), (4.0, 40.0)],
            "ita_Latn": [(0.5, 9.0), (1.0, 15.0), (2.0, 25.0)],
            "ldc": (6.0, 50.0)}                                     # German's LDC2020T07 at its leaf
SCORES_B = {"deu_Latn": [(1.0, 12.0), (2.0, 22.0), (5.0, 35.0)],   # B best for German (both metrics)
            "nld_Latn": [(1.0, 10.0), (2.0, 20.0), (4.5, 38.0)],   # A best chrF++, B best BLEU
            "ita_Latn": [(0.5, 9.0), (1.0, 15.0), (2.0, 25.0)],    # a tie: both best
            "ldc": (4.0, 52.0)}                                     # LDC: A best BLEU, B best chrF++


@pytest.fixture()
def runs(tmp_path):
    tree = tmp_path / "tree.csv"
    tree.write_text(TREE)
    a = write_run(tmp_path / "out", "pthql", tree, SCORES_A, gpu=True)
    b = write_run(tmp_path / "out2", "multi", tree, SCORES_B)
    return a, b


def check_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, path
    width, height = struct.unpack(">II", data[16:24])  # IHDR
    assert 300 < width < 4000 and 150 < height < 4000, (path, width, height)
    assert len(data) > 5000, path


def md_table(md: str) -> dict[tuple[str, str], list[str]]:
    """The score table's rows by (code, test set)."""
    return {(cells[0], cells[2]): cells for line in md.splitlines() if line.startswith("| ") and "_Latn" in line
            and (cells := [c.strip() for c in line.strip().strip("|").split("|")]) and cells[0].endswith("_Latn")}


NC = "not computed"


def test_two_runs_table_best_marks_csv_and_plots(runs, tmp_path, capsys):
    a, b = runs
    out = tmp_path / "cmp"
    assert main(["report", str(a), str(b), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    md = (out / "report.md").read_text()
    assert md in printed
    assert ("| code | language | test set | pthql spBLEU | pthql BLEU (13a) | pthql chrF++ | pthql LID | pthql LID diff "
            "| multi spBLEU | multi BLEU (13a) | multi chrF++ | multi LID | multi LID diff |") in md
    table = md_table(md)
    assert table[("deu_Latn", "flores")] == ["deu_Latn", "German", "flores", "3.00", "1.50", "30.00", NC, NC,
                                             "**5.00**", "**2.50**", "**35.00**", NC, NC]
    # each test set is its own row, with its own best marks
    assert table[("deu_Latn", "ldc2020t07")] == ["deu_Latn", "German", "ldc2020t07", "**6.00**", "**3.00**", "50.00",
                                                 NC, NC, "4.00", "2.00", "**52.00**", NC, NC]
    assert table[("nld_Latn", "flores")][3:6] == ["4.00", "2.00", "**40.00**"]
    assert table[("ita_Latn", "flores")][3:6] == ["**2.00**", "**1.00**", "**25.00**"]
    assert ("nld_Latn", "ldc2020t07") not in table  # Dutch has no LDC2020T07
    assert "| **mean** |  | flores | 3.00 | 1.50 | 31.67 | - | - | 3.83 | 1.92 | 32.67 | - | - |" in md
    assert "| **mean** |  | ldc2020t07 | 6.00 | 3.00 | 50.00 | - | - | 4.00 | 2.00 | 52.00 | - | - |" in md
    assert ("- LID: not computed: no LID model (eval.lid_model is not set) (pthql flores: deu_Latn, nld_Latn, "
            "ita_Latn; multi flores: deu_Latn, nld_Latn, ita_Latn; pthql ldc2020t07: deu_Latn; multi ldc2020t07: "
            "deu_Latn)") in md
    assert f"- BLEU (13a): `{BLEU_SIG}`" in md

    rows = list(csv.DictReader(io.StringIO((out / "report.csv").read_text())))
    assert list(rows[0]) == ["run", "code", "language", "test_set", "node", "node_status", "spbleu", "bleu_13a",
                             "chrf++", "lid", "lid_diff", "smatch", "n_test", "val_loss", "best", "best_metrics",
                             "not_computed"]
    by = {(r["run"], r["code"], r["test_set"]): r for r in rows}
    assert len(rows) == 8
    assert by[("multi", "deu_Latn", "flores")]["best"] == "1" and by[("pthql", "deu_Latn", "flores")]["best"] == "0"
    assert by[("multi", "deu_Latn", "ldc2020t07")]["best"] == "1"
    assert by[("pthql", "deu_Latn", "ldc2020t07")]["best_metrics"] == "spbleu;bleu_13a"
    assert by[("pthql", "nld_Latn", "flores")]["best"] == "1" and by[("pthql", "nld_Latn", "flores")]["best_metrics"] == "chrf++"
    assert by[("multi", "nld_Latn", "flores")]["best_metrics"] == "spbleu;bleu_13a"
    assert by[("pthql", "deu_Latn", "flores")]["node"] == "language.German"
    assert float(by[("multi", "deu_Latn", "flores")]["chrf++"]) == 35.0 and by[("multi", "deu_Latn", "flores")]["lid"] == ""
    assert by[("multi", "deu_Latn", "flores")]["not_computed"] == (f"lid: not computed: {NO_LID}; "
                                                                   f"lid_diff: not computed: {NO_LID}")
    assert by[("pthql", "ita_Latn", "flores")]["best_metrics"] == "spbleu;bleu_13a;chrf++"  # tie: both runs best
    assert [r["best"] for r in rows if r["code"] == "ita_Latn"].count("1") == 1  # one winner per language

    for name in ("scores_flores.png", "scores_ldc2020t07.png", "loss_curves_pthql.png", "loss_curves_multi.png",
                 "timeline_pthql.png", "timeline_multi.png"):
        check_png(out / "plots" / name)
    assert not list((out / "plots").glob("root_to_leaf*"))  # a single-run view
    assert "![Timeline (multi)](plots/timeline_multi.png)" in md


def test_single_run_root_to_leaf(runs, capsys):
    a, _ = runs
    assert main(["report", str(a)]) == 0  # default out: the run's own folder
    md = (a / "report.md").read_text()
    assert "| code | language | test set | spBLEU | BLEU (13a) | chrF++ | LID | LID diff | node | n_test |" in md
    assert f"| deu_Latn | German | flores | 3.00 | 1.50 | 30.00 | {NC} | {NC} | language.German | 10 |" in md
    assert f"| deu_Latn | German | ldc2020t07 | 6.00 | 3.00 | 50.00 | {NC} | {NC} | language.German | 3 |" in md
    assert "chrF++ / spBLEU (parsing runs: smatch F1)" in md
    assert "| code | language | test set | level0 | level1 | language |" in md
    assert "| nld_Latn | Dutch | flores | 11.0 / 1.5 (Indo_European) | 21.0 / 2.5 (Germanic) | 40.0 / 4.0 (Dutch) |" in md
    assert "| ita_Latn | Italian | flores | 9.0 / 0.5 (Indo_European) | 15.0 / 1.0 (Romance) | 25.0 / 2.0 (Italian) |" in md
    assert "| deu_Latn | German | ldc2020t07 | - / - (Indo_European) | - / - (Germanic) | 50.0 / 6.0 (German) |" in md
    rows = list(csv.DictReader(io.StringIO((a / "path_scores.csv").read_text())))
    assert [(r["node"], r["test_set"], float(r["chrf++"]), float(r["spbleu"])) for r in rows if r["code"] == "deu_Latn"
            and r["test_set"] == "flores"] == [("level0.Indo_European", "flores", 10.0, 1.0),
                                               ("level1.Germanic", "flores", 20.0, 2.0),
                                               ("language.German", "flores", 30.0, 3.0)]
    for name in ("scores_flores.png", "scores_ldc2020t07.png", "loss_curves.png", "timeline.png",
                 "root_to_leaf_flores.png", "root_to_leaf_ldc2020t07.png"):
        check_png(a / "plots" / name)
    paths = path_scores(load_run(a))
    assert [(p.code, p.test_set) for p in paths] == [("deu_Latn", "flores"), ("deu_Latn", "ldc2020t07"),
                                                     ("nld_Latn", "flores"), ("ita_Latn", "flores")]
    assert [s.scores["chrf++"] for s in paths[2].path] == [11.0, 21.0, 40.0]


def test_failed_node_reports_what_exists(tmp_path):
    tree = tmp_path / "tree.csv"
    tree.write_text(TREE)
    run_dir = write_run(tmp_path, "broken", tree, SCORES_A, fail_dutch=True)
    result = write_report([run_dir], tmp_path / "rep")
    md = result["markdown"]
    assert "| broken | failed | 5/6 |" in md
    assert "| nld_Latn | Dutch | - | - | - | - | - | - | language.Dutch (failed) | - |" in md
    assert f"| deu_Latn | German | flores | 3.00 | 1.50 | 30.00 | {NC} | {NC} | language.German | 10 |" in md
    assert "| **mean** |  | flores | - | - | - | - | - |  |  |" in md  # a mean over incomplete languages would mislead
    assert "node language.Dutch failed: RuntimeError: CUDA out of memory" in md
    # the failed leaf's own scores are gone, but its ancestors' remain on the path
    assert "| nld_Latn | Dutch | flores | 11.0 / 1.5 (Indo_European) | 21.0 / 2.5 (Germanic) | - / - (Dutch) |" in md
    for png in (tmp_path / "rep" / "plots").iterdir():
        check_png(png)
    rows = {(r.code, r.test_set): r for r in score_rows(result["runs"])}
    assert rows[("nld_Latn", None)].node_status == "failed" and rows[("nld_Latn", None)].scores["chrf++"] is None


def test_timeline_lanes_gpu_ids_and_greedy_workers(runs):
    a, b = runs
    labels, bars = timeline_lanes(load_run(a).nodes)
    assert labels == ["GPU 0", "GPU 1"]
    lanes = {}
    for bar in bars:
        lanes.setdefault(bar.node, []).append(bar.lane)
    assert lanes["level0.Indo_European"] == [0, 1] and lanes["language.Dutch"] == [1]
    labels, bars = timeline_lanes(load_run(b).nodes, slots=2)
    lanes = {bar.node: bar.lane for bar in bars if bar.node != "level0.Indo_European"}
    # Germanic (100-160) takes lane 0, Romance (100-150) lane 1; Italian (150-175) reuses the freed lane 1;
    # German and Dutch (both from 160) get lanes 0 and a third lane (2 is taken until 175).
    assert lanes["level1.Germanic"] == 0 and lanes["level1.Romance"] == 1 and lanes["language.Italian"] == 1
    assert lanes["language.German"] == 0 and lanes["language.Dutch"] == 2
    assert labels == ["worker 1", "worker 2", "worker 3"]


def test_missing_manifest_and_tree_fallback(tmp_path, runs):
    empty = tmp_path / "not_a_run"
    empty.mkdir()
    with pytest.raises(InputError, match="no manifest.json") as err:
        write_report([empty])
    assert str(empty) in str(err.value)
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "manifest.json").write_text('{"nodes": {\n  oops')
    with pytest.raises(InputError, match="not valid JSON") as err:
        write_report([bad])
    assert err.value.line == 2
    # the tree file is gone: names come from the manifest's leaf nodes, the report still works
    a, _ = runs
    (tmp_path / "tree.csv").unlink()
    run = load_run(a)
    assert [lang.name for lang in run.tree.languages] == ["German", "Dutch", "Italian"]
    assert any("unreadable" in note for note in run.notes)
    md = write_report([a], tmp_path / "r2", with_plots=False)["markdown"]
    assert f"| ita_Latn | Italian | flores | 2.00 | 1.00 | 25.00 | {NC} | {NC} | language.Italian | 10 |" in md


def test_parsing_run_reports_smatch(tmp_path):
    tree = tmp_path / "tree.csv"
    tree.write_text(TREE)
    run_dir = write_run(tmp_path, "parse", tree, SCORES_A)
    data = json.loads((run_dir / "manifest.json").read_text())
    for entry in data["nodes"].values():  # text2amr nodes score smatch (f1 in 0..1 as metrics.smatch_scores)
        for code, sets in entry["metrics"]["languages"].items():
            entry["metrics"]["languages"][code] = {
                name: {"n": 10, "precision": 0.5, "recall": 0.5, "f1": sc["chrf++"] / 100, "valid_share": 1.0}
                for name, sc in sets.items()}
    (run_dir / "manifest.json").write_text(json.dumps(data))
    result = write_report([run_dir], tmp_path / "rep")
    md = result["markdown"]
    assert "| code | language | test set | smatch F1 | node | n_test |" in md
    assert "| deu_Latn | German | flores | 0.30 | language.German | 10 |" in md
    assert "| deu_Latn | German | flores | 0.1 (Indo_European) | 0.2 (Germanic) | 0.3 (German) |" in md
    rows = list(csv.DictReader(io.StringIO((tmp_path / "rep" / "report.csv").read_text())))
    assert rows[0]["smatch"] == "0.3000" and rows[0]["chrf++"] == "" and rows[0]["best"] == "1"
    for png in (tmp_path / "rep" / "plots").iterdir():
        check_png(png)


def test_results_files_keyed_by_test_set_and_the_lid_baseline(tmp_path):
    """The driver's results.md|csv: a row per language and test set, reasons for what was not computed,
    signatures; the references' LID the workers computed go into eval.lid_baseline (the original's -ge
    file, whose own values are kept)."""
    from hql_ray.outputs.manifest import read_manifest, run_tree
    from hql_ray.outputs.results import write_results

    tree_file = tmp_path / "tree.csv"
    tree_file.write_text(TREE)
    run_dir = write_run(tmp_path, "res", tree_file, SCORES_A)
    baseline = tmp_path / "global_evaluations.json"
    baseline.write_text(json.dumps({"flores": {"lid": {}}, "ldc2020t07": {"lid": {"deu_Latn": 95.0}}}, indent=4))
    data = json.loads((run_dir / "manifest.json").read_text())
    data["config"]["eval"]["lid_baseline"] = str(baseline)
    german = data["nodes"]["language.German"]["metrics"]["languages"]["deu_Latn"]
    german["flores"].update(lid=80.0, lid_diff=-10.0, reference_lid=90.0, reference_lid_source="computed",
                            not_computed={})
    german["ldc2020t07"].update(lid=90.0, lid_diff=-5.0, reference_lid=95.0, reference_lid_source="eval.lid_baseline",
                                not_computed={})
    italian = data["nodes"]["level1.Romance"]["metrics"]["languages"]["ita_Latn"]["flores"]  # an inner node's too
    italian.update(lid=70.0, lid_diff=-20.0, reference_lid=91.5, reference_lid_source="computed", not_computed={})
    (run_dir / "manifest.json").write_text(json.dumps(data))
    manifest = read_manifest(run_dir)
    rows = write_results(manifest, run_tree(manifest)[0], run_dir)
    assert [(r.code, r.test_set) for r in rows] == [("deu_Latn", "flores"), ("deu_Latn", "ldc2020t07"),
                                                    ("nld_Latn", "flores"), ("ita_Latn", "flores")]
    md = (run_dir / "results.md").read_text()
    assert ("| code | language | test set | node | n | spBLEU | BLEU (13a) | chrF++ | LID | LID diff | val_loss | "
            "initial_val_loss |") in md
    assert "| deu_Latn | German | flores | language.German | 10 | 3.00 | 1.50 | 30.00 | 80.00 | -10.00 | 1.90 | 6.00 |" in md
    assert "| deu_Latn | German | ldc2020t07 | language.German | 3 | 6.00 | 3.00 | 50.00 | 90.00 | -5.00 |" in md
    assert f"| nld_Latn | Dutch | flores | language.Dutch | 10 | 4.00 | 2.00 | 40.00 | {NC} | {NC} |" in md
    assert f"- LID: not computed: {NO_LID} (flores: nld_Latn, ita_Latn)" in md
    assert f"- BLEU (13a): `{BLEU_SIG}`" in md and "union" not in md
    rows = list(csv.DictReader(io.StringIO((run_dir / "results.csv").read_text())))
    assert list(rows[0])[:11] == ["code", "language", "test_set", "node", "n_test", "spbleu", "bleu_13a", "chrf++",
                                  "lid", "lid_diff", "smatch"]
    assert rows[0]["reference_lid"] == "90.0" and rows[2]["lid"] == ""
    assert rows[2]["not_computed"] == f"lid: not computed: {NO_LID}; lid_diff: not computed: {NO_LID}"
    assert rows[0]["signatures"].startswith(f"bleu_13a={BLEU_SIG}; spbleu=")
    written = json.loads(baseline.read_text())
    assert written == {"flores": {"lid": {"deu_Latn": 90.0, "ita_Latn": 91.5}}, "ldc2020t07": {"lid": {"deu_Latn": 95.0}}}


def test_an_older_runs_scores_show_as_the_union_test_set(tmp_path):
    """A manifest of format <= 2 (one score dict per language, "bleu" = BLEU 13a) reports its scores as test
    set "union", says so, and its 13a BLEU is never shown as spBLEU."""
    tree_file = tmp_path / "tree.csv"
    tree_file.write_text(TREE)
    run_dir = write_run(tmp_path, "old", tree_file, SCORES_A)
    data = json.loads((run_dir / "manifest.json").read_text())
    for entry in data["nodes"].values():
        for code, sets in (entry["metrics"] or {}).get("languages", {}).items():
            flores = sets["flores"]
            entry["metrics"]["languages"][code] = {"n": 6, "bleu": flores["bleu_13a"], "chrf++": flores["chrf++"],
                                                   "spbleu": None, "signatures": {"bleu": BLEU_SIG, "spbleu": None},
                                                   "clipped": 0, "samples": []}
    (run_dir / "manifest.json").write_text(json.dumps(data))
    md = write_report([run_dir], tmp_path / "rep", with_plots=False)["markdown"]
    assert f"| deu_Latn | German | union | {NC} | 1.50 | 30.00 | {NC} | {NC} | language.German | 6 |" in md
    assert "test set 'union': scores from an older hql-ray" in md
    assert "- spBLEU: not computed: not recorded by the older hql-ray that made this run" in md


# ---- a FLORES-200-sized run (issue 25): the report stays readable -----------------------------------------
def test_a_report_of_many_languages_opens_with_means_and_keeps_its_plots_readable(tmp_path):
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from report_scale import TEST_SETS, made_up_run

    run_dir = made_up_run(tmp_path, 60, seed=1, slots=8)
    result = write_report([run_dir])
    md = result["markdown"]
    means = md.split("## Means per test set")[1].split("## Scores per language")[0]
    rows = [line for line in means.splitlines() if line.startswith("| made-up |")]
    assert sorted(row.split(" | ")[1] for row in rows) == sorted(TEST_SETS)
    assert all(row.split(" | ")[2] == "60" for row in rows)
    sizes = {Path(f).name: struct.unpack(">II", Path(f).read_bytes()[16:24]) for f in result["files"]
             if str(f).endswith(".png")}
    assert all(w <= 24 * 110 for name, (w, _) in sizes.items() if name.startswith("scores_"))  # capped width
    # No 60-entry legend: the root-to-leaf plot keeps its panels' height.
    assert all(h < 800 for name, (_, h) in sizes.items() if name.startswith("root_to_leaf_"))


def test_a_small_report_has_no_means_section(tmp_path):
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from report_scale import made_up_run

    run_dir = made_up_run(tmp_path, 12, seed=1, slots=4)
    md = write_report([run_dir], with_plots=False)["markdown"]
    assert "## Means per test set" not in md and md.count("| **mean** |") == 4
