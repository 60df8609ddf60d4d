"""`hql-ray parse`: FLORES English -> AMR with a tiny parser the test trains -> the flores corpus."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import penman
import pytest

from hql_ray import cli
from hql_ray.settings.errors import InputError
from hql_ray.prep.parse_amr import find_flores_files, parse_split_map, read_flores

REPO = Path(__file__).resolve().parent.parent
LANGS = ("eng_Latn", "deu_Latn", "ita_Latn")
BROKEN_ROW = 2  # the parser is taught to leave this row's graph unclosed
DEV, DEVTEST = range(0, 6), range(6, 8)


def sample(code: str) -> list[tuple[str, str]]:
    """The bundled sample's amr3 train rows: the same graphs in every language, line by line."""
    path = REPO / "data/sample/amr3" / code / f"amr3_{code}_train.tsv"
    return [tuple(line.split("\t")) for line in path.read_text(encoding="utf-8").splitlines()[:8]]


def short_graph(amr: str) -> str:
    """What the tiny parser learns for a sentence: the graph's top node, `(w / want-01)`."""
    g = penman.decode(amr)
    return f"({g.top} / {g.instances()[0].target})"


def write_flores(root: Path) -> Path:
    """FLORES-200 layout: dev/<code>.dev and devtest/<code>.devtest, line-aligned across languages."""
    for code in LANGS:
        sentences = [s for _, s in sample(code)]
        for split, rows in (("dev", DEV), ("devtest", DEVTEST)):
            (root / split).mkdir(parents=True, exist_ok=True)
            (root / split / f"{code}.{split}").write_text("".join(sentences[i] + "\n" for i in rows), encoding="utf-8")
    return root


def train_tiny_parser(out: Path, steps: int = 80) -> Path:
    """A word-level T5 (~30k parameters) that memorizes sentence -> top-node graph in a few seconds."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, T5Config, T5ForConditionalGeneration

    pairs = []
    for i, (amr, sentence) in enumerate(sample("eng_Latn")):
        target = " ".join(re.sub(r"([()])", r" \1 ", short_graph(amr)).split())
        pairs.append((sentence, target.rsplit(")", 1)[0] if i == BROKEN_ROW else target))
    words = sorted({w for s, t in pairs for w in s.split() + t.split()})
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(words)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    config = T5Config(vocab_size=len(tok), d_model=32, d_kv=8, d_ff=64, num_layers=1, num_decoder_layers=1,
                      num_heads=4, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
                      tie_word_embeddings=False, dropout_rate=0.0)
    torch.manual_seed(0)
    model = T5ForConditionalGeneration(config)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 30k-parameter model: threads only add waiting on a shared 2-core machine
    x = tok([s for s, _ in pairs], padding=True, return_tensors="pt")
    y = tok([t for _, t in pairs], padding=True, return_tensors="pt").input_ids
    y[y == 0] = -100
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        model(**x, labels=y).loss.backward()
        opt.step()
        opt.zero_grad()
    torch.set_num_threads(threads)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def parser_dir(tmp_path_factory) -> Path:
    return train_tiny_parser(tmp_path_factory.mktemp("parser"))


# ---- reading FLORES and bad input (no Ray) ----------------------------------------------------
def test_flores_layout_alignment_and_split_map(tmp_path):
    root = write_flores(tmp_path / "flores")
    files = find_flores_files(root)
    assert sorted(files) == ["dev", "devtest"] and sorted(files["dev"]) == sorted(LANGS)
    texts, skipped = read_flores(files, None, parse_split_map("dev=train,devtest=test"))
    assert skipped == [] and texts["devtest"]["ita_Latn"] == [sample("ita_Latn")[i][1] for i in DEVTEST]

    with pytest.raises(InputError, match="is not FLORES_SPLIT=SPLIT"):
        parse_split_map("dev=training")
    (root / "dev" / "deu_Latn.dev").write_text("Eins.\nZwei.\n")
    with pytest.raises(InputError, match=r"deu_Latn\.dev: 2 lines but 6 in .*eng_Latn\.dev"):
        read_flores(files, None, parse_split_map("dev=train"))
    lines = [s for _, s in sample("deu_Latn")][:6]
    lines[3] = "  "
    (root / "dev" / "deu_Latn.dev").write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match=r"deu_Latn\.dev:4: empty sentence"):
        read_flores(files, None, parse_split_map("dev=train"))
    texts, skipped = read_flores(files, None, parse_split_map("dev=train"), skip_bad=True)
    assert texts["dev"]["deu_Latn"][3] is None and len(skipped) == 1
    with pytest.raises(InputError, match="no FLORES file for: fra_Latn"):
        read_flores(files, ["fra_Latn"], parse_split_map("dev=train"))


def test_a_folder_that_is_no_parser_is_refused_before_work(tmp_path, capsys):
    root = write_flores(tmp_path / "flores")
    (tmp_path / "empty").mkdir()
    assert cli.main(["parse", str(root), "--parser", str(tmp_path / "empty"), "-o", str(tmp_path / "out")]) == 2
    assert "neither manifest.json (a run) nor config.json (a model)" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# ---- end to end on the shared Ray --------------------------------------------------------------
def test_parse_end_to_end_writes_only_wellformed_graphs(ray_session, parser_dir, tmp_path, capsys):
    root, out = write_flores(tmp_path / "flores"), tmp_path / "data"
    args = ["parse", str(root), "--parser", str(parser_dir), "-o", str(out), "--validation-size", "2",
            "--shard-size", "3", "--batch-size", "2", "--actors", "1", "--max-new-tokens", "20"]
    assert cli.main(args) == 0
    summary = json.loads((out / ".hql-ray/parse/summary.json").read_text())
    assert summary["graphs"]["valid"] == 7 and summary["graphs"]["invalid"] == 1
    assert summary["graphs"]["rejected"][0].startswith(f"dev:{BROKEN_ROW + 1}: ")
    assert summary["shards_written"] == 3  # dev: 3 + 3, devtest: 2
    # dev rows 0-3 train (minus the broken one), the last 2 dev rows validation, devtest test.
    expected = {"train": [0, 1, 3], "validation": [4, 5], "test": [6, 7]}
    for code in LANGS:
        rows = sample(code)
        for split, idx in expected.items():
            ours = out / "flores" / code / f"flores_{code}_{split}.tsv"
            original = out / "SilverAMR_GoldText/data/flores" / code / f"flores_{code}_{split}.tsv"
            assert ours.read_bytes() == original.read_bytes()
            assert ours.read_text(encoding="utf-8").splitlines() == [f"{short_graph(rows[i][0])}\t{rows[i][1]}"
                                                                      for i in idx]
    tree = tmp_path / "tree.csv"
    tree.write_text("code,level0,language\n" + "".join(f"{c},root,{c}\n" for c in LANGS))
    capsys.readouterr()
    assert cli.main(["data", str(out), "-lf", str(tree)]) == 0
    assert "no problems" in capsys.readouterr().out

    # The same command again: every shard reused; another parser into the same folder: refused.
    assert cli.main(args) == 0
    again = json.loads((out / ".hql-ray/parse/summary.json").read_text())
    assert again["shards_reused"] == 3 and again["shards_written"] == 0 and again["graphs"] == summary["graphs"]
    other = shutil.copytree(parser_dir, tmp_path / "other-parser")
    assert cli.main([*args[:3], str(other), *args[4:]]) == 2
    assert "shards of a different run (parser:" in capsys.readouterr().err


@pytest.mark.slow
def test_parse_with_a_text2amr_runs_english_adapter(ray_session, tmp_path):
    """--parser RUN: a 2-step text2amr run's exported English adapter, loaded and prompted as `generate` does."""
    tree = tmp_path / "eng.csv"
    tree.write_text("code,level0,language\neng_Latn,root,English\n")
    overrides = {"run.output_dir": tmp_path / "runs", "run.name": "eng_parser", "data.dir": REPO / "data/sample",
                 "data.cache_dir": tmp_path / ".cache", "tree.file": tree, "tree.levels": "[language]",
                 "model.base": "tiny", "model.mode": "lora", "model.lora.r": 4, "train.max_steps": 2,
                 "data.direction": "text2amr", "eval.generate": "false", "resources.max_failures": 0}
    assert cli.main(["train", *[f"{k}={v}" for k, v in overrides.items()]]) == 0
    run_dir = tmp_path / "runs" / "eng_parser"
    assert (run_dir / "final" / "eng_Latn").is_dir()
    root, out = write_flores(tmp_path / "flores"), tmp_path / "data"
    assert cli.main(["parse", str(root), "--parser", str(run_dir), "-o", str(out), "--validation-size", "2",
                     "--actors", "1", "--max-new-tokens", "8"]) == 0
    summary = json.loads((out / ".hql-ray/parse/summary.json").read_text())
    graphs = summary["graphs"]
    assert graphs["valid"] + graphs["invalid"] == 8 and summary["languages"]["eng_Latn"]["sentences"] == 8
    written = sum(len(p.read_text().splitlines()) for p in (out / "flores" / "deu_Latn").glob("*.tsv"))
    assert written == graphs["valid"]  # a 2-step model mostly babbles: only what penman reads is written
