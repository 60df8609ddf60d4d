"""hql-ray generate with a real tiny exported adapter (trained for 2 steps without Ray)."""

from __future__ import annotations

import io
import json
import shutil
import sys
from pathlib import Path

import pytest

from hql_ray.cli import main
from hql_ray.settings.errors import InputError
from hql_ray.outputs.generate import generate_sentences, load_generator, split_graphs
from conftest import export_adapter
from hql_ray.settings.records import NodeSpec

TREE = "code,level0,language\ndeu_Latn,Germanic,German\nnld_Latn,Germanic,Dutch\n"
GRAPHS = [
    "(w / want-01 :ARG0 (g / girl) :ARG1 (s / sing-01 :ARG0 g))",
    "(f / find-01 :ARG0 (c / cat) :ARG1 (a / apple) :polarity -)",
    '(p / person :name (n / name :op1 "Anna (the) cat") :wiki "Anna")',
]
PENMAN = """# a file header comment
# ::id one ::date 2024
# ::snt The girl wants to sing.
(w / want-01
   :ARG0 (g / girl)
   :ARG1 (s / sing-01
            :ARG0 g))

# ::id two
(f / find-01
   :ARG0 (c / cat)
   :ARG1 (a / apple)
   :polarity -)
"""
LONG = "(a / and " + " ".join(f":op{i} (x{i} / thing-{i})" for i in range(1, 8)) + ")"  # > 128 tokens (bytes)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A one-leaf run: German trained 2 steps (random tiny mT5, 4-bit), exported to final/deu_Latn."""
    from hql_ray.outputs import export
    from hql_ray.settings.config import make_config
    from hql_ray.training.context import LocalContext
    from hql_ray.outputs.manifest import Manifest
    from hql_ray.training.node import train_node
    from make_sample import write_sample
    from hql_ray.settings.tree import load_tree

    root = tmp_path_factory.mktemp("gen")
    write_sample(root / "data", n_train=16, n_validation=4, n_test=4, n_flores_train=0, n_flores_validation=0,
                 n_flores_test=0)
    (root / "tree.csv").write_text(TREE)
    cfg = make_config(None, {}, [
        f"run.output_dir={root / 'runs'}", "run.name=gen", f"data.dir={root / 'data'}", f"tree.file={root / 'tree.csv'}",
        "tree.levels=[language]", "model.base=tiny", "model.mode=qlora", "model.lora.r=4", "train.max_steps=2",
        "train.batch_size=8", "train.learning_rate=0.03", "eval.generate=false", "data.max_source_length=128",
        "eval.max_new_tokens=8", "data.linearize.keep_wiki=false",
    ]).with_absolute_paths()
    tree = load_tree(cfg.tree.file, cfg.tree.levels)
    manifest = Manifest.create(cfg.run_dir / "manifest.json", tree, cfg.to_dict(), cfg.run_name)
    leaf = tree.nodes["language.German"]
    node = NodeSpec.of(leaf, 0)
    out = train_node(cfg, node, [], LocalContext(device="cpu"))
    export_adapter([out.adapter], cfg.run_dir / "final" / "deu_Latn", export.base_model_reference(cfg))
    manifest.update(leaf.id, status="done", metrics=out.metrics, history=out.history,
                    adapter="nodes/language.German/adapter")
    return cfg.run_dir


def cli(argv, capsys) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_single_line_file_matches_python_api_and_flags_clipping(run_dir, tmp_path, capsys):
    src = tmp_path / "graphs.txt"
    src.write_text("\n".join([GRAPHS[0], "", GRAPHS[1], LONG, GRAPHS[2]]) + "\n")
    code, out, err = cli(["generate", str(run_dir), "--lang", "deu_Latn", str(src), "--batch-size", "2"], capsys)
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 4 and out.endswith("\n")
    assert f"{src}:4: warning: input is" in err and "max source length 128" in err  # LONG is on line 4
    assert f"{src}:1:" not in err and f"{src}:5:" not in err
    gen = load_generator(run_dir, "German")  # by display name too
    expected = generate_sentences(run_dir, "deu_Latn", [GRAPHS[0], GRAPHS[1], LONG, GRAPHS[2]], generator=gen)
    assert lines == expected
    assert any(line.strip() for line in lines)  # the 2-step model says something (not only padding)
    # the run's linearization (keep_wiki=false) and prompt, parentheses inside quotes kept
    assert gen.source(GRAPHS[2]) == 'Translate to German: (p / person :name (n / name :op1 "Anna (the) cat"))'
    result = gen.run([GRAPHS[0], LONG])
    assert result.clipped == [False, True]

    # -o OUT: same lines in the file, nothing on stdout
    dest = tmp_path / "out" / "german.txt"
    code, out2, err2 = cli(["generate", str(run_dir), str(src), "--lang", "deu_Latn", "-o", str(dest)], capsys)
    assert code == 0 and out2 == "" and dest.read_text() == out
    assert "wrote 4 line(s)" in err2


def test_multiline_penman_and_stdin(run_dir, tmp_path, capsys, monkeypatch):
    src = tmp_path / "blocks.amr"
    src.write_text(PENMAN)
    code, out, err = cli(["generate", str(run_dir), "--lang", "deu_Latn", str(src), "--max-new-tokens", "6"], capsys)
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 2
    assert [g.line for g in split_graphs(PENMAN.splitlines())] == [4, 10]
    blocks = split_graphs(PENMAN.splitlines())
    gen = load_generator(run_dir, "deu_Latn")
    assert [gen.source(b.text) for b in blocks] == [gen.source(GRAPHS[0]), gen.source(GRAPHS[1])]  # same as one-line
    expected = generate_sentences(run_dir, "deu_Latn", [b.text for b in blocks], max_new_tokens=6, generator=gen)
    assert lines == expected

    monkeypatch.setattr(sys, "stdin", io.StringIO(GRAPHS[1] + "\n" + GRAPHS[0] + "\n"))
    code, out3, err = cli(["generate", str(run_dir), "--lang", "deu_Latn", "--max-new-tokens", "6"], capsys)
    assert code == 0, err
    assert out3.splitlines() == [lines[1], lines[0]]


def test_bad_input_errors_name_file_and_line(run_dir, tmp_path, capsys):
    bad = tmp_path / "bad.txt"
    bad.write_text(f"{GRAPHS[0]}\n{GRAPHS[1]}\n(x / thing :ARG0)\n")
    code, out, err = cli(["generate", str(run_dir), "--lang", "deu_Latn", str(bad)], capsys)
    assert code == 2 and out == ""
    assert f"{bad}:3: malformed AMR" in err
    with pytest.raises(InputError, match=r"a '\)' is missing") as info:
        split_graphs(["(a / b", "(c / d)"], "f.txt")
    assert info.value.line == 1
    with pytest.raises(InputError, match="extra '\\)'") as info:
        split_graphs(["(a / b))"], "f.txt")
    assert info.value.line == 1
    with pytest.raises(InputError, match="expected an AMR graph") as info:
        split_graphs(["(a / b)", "", "hello world"], "f.txt")
    assert info.value.line == 3
    with pytest.raises(InputError, match="graph not closed before a blank line") as info:
        split_graphs(["# ::id 1", "(a / b", "   :ARG0 (c / d)", "", "(e / f)"], "f.txt")
    assert info.value.line == 2
    with pytest.raises(InputError, match="<graphs>:2: malformed AMR"):
        generate_sentences(run_dir, "deu_Latn", [GRAPHS[0], "(a / b :ARG0)"])


def test_unknown_or_untrained_language(run_dir, capsys):
    with pytest.raises(InputError, match=r"unknown language 'fra_Latn'; this run's languages: deu_Latn \(German\), "
                                         r"nld_Latn \(Dutch\)"):
        load_generator(run_dir, "fra_Latn")
    code, _, err = cli(["generate", str(run_dir), "--lang", "xx"], capsys)
    assert code == 2 and "unknown language 'xx'" in err
    with pytest.raises(InputError, match="no exported model for nld_Latn: its leaf node language.Dutch is pending"):
        load_generator(run_dir, "Dutch")
    with pytest.raises(InputError, match="no manifest.json"):
        load_generator(run_dir / "final", "deu_Latn")


def test_text2amr_run_parses_sentences(run_dir, tmp_path, capsys):
    parse_run = tmp_path / "parse"
    shutil.copytree(run_dir, parse_run)
    data = json.loads((parse_run / "manifest.json").read_text())
    data["config"]["data"]["direction"] = "text2amr"
    (parse_run / "manifest.json").write_text(json.dumps(data))
    gen = load_generator(parse_run, "deu_Latn")
    assert gen.source("  Das Mädchen   singt. ") == "Parse from German: Das Mädchen singt."
    src = tmp_path / "sentences.txt"
    src.write_text("Das Mädchen singt.\n\nDie Katze findet den Apfel.\n")
    code, out, err = cli(["generate", str(parse_run), "--lang", "deu_Latn", str(src), "--max-new-tokens", "4"], capsys)
    assert code == 0, err
    assert len(out.splitlines()) == 2
