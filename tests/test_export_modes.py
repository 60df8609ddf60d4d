"""export.mode: adapter, adapter-bf16, merged, compact of a saved chain on the tiny model, each loaded the
standard way (PeftModel / AutoModelForSeq2SeqLM) and compared with the exact export's logits."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import AutoModelForSeq2SeqLM

from hql_ray.outputs import export, export_modes, model_card
from hql_ray.settings.config import Config, LoraShape
from conftest import export_adapter
from hql_ray.settings.exports import EXPORT_MODES, Exporter
from hql_ray.settings.records import ExportInfo
from hql_ray.training.adapter_files import load_adapter_state, save_adapter_state
from hql_ray.training.handoff import attach_node_adapter, node_adapter_state
from hql_ray.training.modeling import TINY, load_base_model, resolve_base_model

CPU = torch.device("cpu")
# A PTHQL-like chain: three nodes of different shapes, total rank 4 + 6 + 5 = 15.
SPECS = [LoraShape(r=4, alpha=8, use_rslora=True), LoraShape(r=6, alpha=3, use_rslora=False),
         LoraShape(r=5, alpha=5, use_rslora=True)]
BF16_TOL = 0.05  # max |logit diff| of adapter-bf16 vs adapter, logits ~40-60: bf16 factors (8 bits of mantissa)
MERGED_FP32_TOL = 0.25  # merged loaded in fp32 vs the exact adapter: the bf16 rounding of every weight
MERGED_BF16_TOL = 1.0  # merged as from_pretrained(dir) loads it (bf16 compute on CPU)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    return resolve_base_model(TINY, tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def chain_dirs(tiny, tmp_path_factory) -> list[Path]:
    """Three node adapters with random non-zero factors, saved as the driver saves them."""
    root, dirs = tmp_path_factory.mktemp("nodes"), []
    for i, spec in enumerate(SPECS):
        model = attach_node_adapter(load_base_model(tiny, "lora", CPU), spec, "stack", [])
        g = torch.Generator().manual_seed(i)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if p.requires_grad:
                    p.copy_(torch.randn(p.shape, generator=g) * (0.3 if "lora_A" in name else 0.005))
        dirs.append(save_adapter_state(node_adapter_state(model), root / f"n{i}" / "adapter"))
    return dirs


def _cfg(mode: str, r: int = 4) -> Config:
    cfg = Config()
    cfg.model.base, cfg.model.mode, cfg.model.lora.r, cfg.export.mode = TINY, "lora", r, mode
    return cfg


def _logits(model) -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    ids, dec = torch.randint(2, 300, (2, 12), generator=g), torch.randint(2, 300, (2, 7), generator=g)
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids, decoder_input_ids=dec).logits.float()


def _adapter_logits(tiny: str, adapter_dir: Path) -> torch.Tensor:
    return _logits(PeftModel.from_pretrained(AutoModelForSeq2SeqLM.from_pretrained(tiny, dtype=torch.float32),
                                             str(adapter_dir)))


@pytest.fixture(scope="module")
def exact(tiny, chain_dirs, tmp_path_factory) -> tuple[Path, torch.Tensor]:
    out = tmp_path_factory.mktemp("exact") / "deu_Latn"
    info = export_modes.export_language(_cfg("adapter"), chain_dirs, out, tiny)
    assert info == ExportInfo("adapter", export_modes.dir_bytes(out))
    return out, _adapter_logits(tiny, out)


def test_adapter_is_the_exact_export(tiny, chain_dirs, exact, tmp_path):
    out, logits = exact
    # the in-memory concatenation of the chain (export_adapter), tensor for tensor
    before = export_adapter([load_adapter_state(d) for d in chain_dirs], tmp_path / "before", tiny)
    written, want = load_file(str(out / "adapter_model.safetensors")), load_file(str(before / "adapter_model.safetensors"))
    assert written.keys() == want.keys() and all(torch.equal(written[k], want[k]) for k in want)
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert (cfg["r"], cfg["lora_alpha"], cfg["use_rslora"]) == (15, 15, False)
    # not vacuous: the chain moves the logits a lot
    assert (_logits(AutoModelForSeq2SeqLM.from_pretrained(tiny, dtype=torch.float32)) - logits).abs().max() > 1.0


def _data_bytes(adapter_dir: Path) -> int:
    """The tensor bytes of an adapter's safetensors file (its size less the 8-byte length and the header)."""
    path = adapter_dir / "adapter_model.safetensors"
    with open(path, "rb") as fh:
        header = int.from_bytes(fh.read(8), "little")
    return path.stat().st_size - 8 - header


def test_adapter_bf16(tiny, chain_dirs, exact, tmp_path):
    out = tmp_path / "deu_Latn"
    info = export_modes.export_language(_cfg("adapter-bf16"), chain_dirs, out, tiny)
    with safe_open(str(out / "adapter_model.safetensors"), framework="pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}
    assert 2 * _data_bytes(out) == _data_bytes(exact[0])  # half the bytes of the fp32 tensors
    assert info == ExportInfo("adapter-bf16", export_modes.dir_bytes(out))
    diff = (_adapter_logits(tiny, out) - exact[1]).abs().max().item()
    assert 0 < diff <= BF16_TOL, diff


@pytest.fixture(scope="module")
def merged(tiny, chain_dirs, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("merged") / "deu_Latn"
    return out, export_modes.export_language(_cfg("merged"), chain_dirs, out, tiny)


@pytest.fixture(scope="module")
def compact(tiny, chain_dirs, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("compact") / "deu_Latn"
    return out, export_modes.export_language(_cfg("compact", r=4), chain_dirs, out, tiny)


def test_merged_loads_without_peft(tiny, merged, exact):
    out, info = merged
    assert not (out / "adapter_config.json").exists() and (out / "config.json").exists()
    assert info == ExportInfo("merged", export_modes.dir_bytes(out))
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}
    as_saved = AutoModelForSeq2SeqLM.from_pretrained(str(out))  # the standard call
    diff_saved = (_logits(as_saved) - exact[1]).abs().max().item()
    diff_fp32 = (_logits(AutoModelForSeq2SeqLM.from_pretrained(str(out), dtype=torch.float32)) - exact[1]).abs().max().item()
    assert diff_fp32 <= MERGED_FP32_TOL, diff_fp32
    assert diff_saved <= MERGED_BF16_TOL, diff_saved
    # the deltas really are in the weights: far from the bare base
    base = _logits(AutoModelForSeq2SeqLM.from_pretrained(tiny, dtype=torch.float32))
    assert (base - exact[1]).abs().max() > 10 * MERGED_FP32_TOL


def _measured(reported_from: torch.Tensor, exact_logits: torch.Tensor) -> tuple[float, float]:
    diff = (reported_from.double() - exact_logits.double())
    return diff.abs().max().item(), (diff.norm() / exact_logits.double().norm()).item()


def test_compact_reports_its_logit_error(tiny, compact, exact):
    out, info = compact
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert (cfg["r"], cfg["lora_alpha"], cfg["use_rslora"], info.rank) == (4, 4, False, 4)
    # the reported error is the one a user measures with the standard loads, on the same probe batch
    vocab = AutoModelForSeq2SeqLM.from_pretrained(tiny).config.vocab_size
    ids, dec = export_modes.probe_inputs(vocab)

    def probe(model):
        with torch.no_grad():
            return model.eval()(input_ids=ids, decoder_input_ids=dec).logits

    compact_model = PeftModel.from_pretrained(AutoModelForSeq2SeqLM.from_pretrained(tiny, dtype=torch.float32), str(out))
    exact_model = PeftModel.from_pretrained(AutoModelForSeq2SeqLM.from_pretrained(tiny, dtype=torch.float32),
                                            str(exact[0]))
    max_abs, rel = _measured(probe(compact_model), probe(exact_model))
    assert info.logit_max_abs_error == pytest.approx(max_abs, rel=1e-3, abs=1e-4)
    assert info.logit_rel_error == pytest.approx(rel, rel=1e-3, abs=1e-6)
    assert max_abs > 0.01 and rel > 1e-4  # rank 4 of 15 really loses something
    # and rank 4 is far better than nothing: the error is a fraction of what the chain does to the logits
    assert max_abs < (_logits(compact_model) - _logits(AutoModelForSeq2SeqLM.from_pretrained(tiny))).abs().max()


def test_compact_is_exact_when_the_chain_fits(tiny, chain_dirs, exact, tmp_path):
    out = tmp_path / "deu_Latn"
    info = export_modes.export_language(_cfg("compact", r=32), chain_dirs, out, tiny)
    assert info.rank == 15 and json.loads((out / "adapter_config.json").read_text())["r"] == 15
    assert info.logit_max_abs_error < 1e-4 and info.logit_rel_error < 1e-6
    assert (_adapter_logits(tiny, out) - exact[1]).abs().max().item() < 1e-4


def test_compact_module_is_the_best_rank_k_approximation():
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(12, 40, generator=g, dtype=torch.float64), torch.randn(30, 12, generator=g, dtype=torch.float64)
    full = b @ a
    sv = torch.linalg.svdvals(full)
    a2, b2 = export_modes.compact_module(a, b, 5)
    assert a2.shape == (5, 40) and b2.shape == (30, 5)
    # Eckart-Young: the Frobenius error is the norm of the dropped singular values
    assert torch.linalg.norm(full - b2 @ a2).item() == pytest.approx(sv[5:].norm().item(), rel=1e-9)
    # singular values split evenly between the two factors
    torch.testing.assert_close(torch.linalg.norm(a2, dim=1), torch.linalg.norm(b2, dim=0))
    a3, b3 = export_modes.compact_module(a, b, 16)  # more than the rank: exact, zero-padded
    torch.testing.assert_close(b3 @ a3, full)
    assert a3[12:].abs().max() == 0 and b3[:, 12:].abs().max() == 0


def _card(export_info: ExportInfo) -> str:
    info = model_card.CardInfo("deu_Latn", "German", "amr2text", "German: {amr}", ["root", "language.German"],
                               "stack", "qlora", "tiny", "tiny", "r",
                               {"quant_type": "nf4", "double_quant": True, "compute_dtype": "auto"}, None, ["q"], "d",
                               export=export_info)
    return model_card.card_text(info)


def test_model_card_names_the_export_mode(tmp_path):
    text = _card(ExportInfo("compact", 2_500_000, 4, 0.0123, 0.000456))
    assert "`compact`" in text and "0.0123" in text and "0.000456" in text and "2.5 MB" in text
    (tmp_path / "README.md").write_text(text)
    fields = model_card.card_fields(tmp_path)
    assert fields["export"]["logit_max_abs_error"] == 0.0123 and fields["export"]["rank"] == 4
    merged = _card(ExportInfo("merged", 10))
    assert "library_name: transformers" in merged and "PeftModel" not in merged.split("## Load it")[1]
    assert "model = AutoModelForSeq2SeqLM.from_pretrained('final/deu_Latn', dtype=torch.float32)" in merged
    assert "tokenizer = AutoTokenizer.from_pretrained('tiny')" in merged and "4-bit base" in merged
    assert "library_name: peft" in _card(ExportInfo("adapter-bf16", 10))


def test_generate_loads_merged_and_compact(tiny, merged, compact, tmp_path):
    """`hql-ray generate`'s Generator loads a merged export (no adapter) and a compact one."""
    from hql_ray.settings.config import make_config
    from hql_ray.outputs.generate import load_generator
    from hql_ray.outputs.manifest import Manifest
    from hql_ray.settings.tree import load_tree

    (tmp_path / "tree.csv").write_text("code,level0,language\ndeu_Latn,Germanic,German\nnld_Latn,Germanic,Dutch\n")
    cfg = make_config(None, {}, [f"run.output_dir={tmp_path / 'runs'}", "run.name=gen", f"data.dir={tmp_path}",
                                 f"tree.file={tmp_path / 'tree.csv'}", "tree.levels=[language]", "model.base=tiny",
                                 "model.mode=lora", "model.lora.r=4", "eval.max_new_tokens=4",
                                 f"data.cache_dir={Path(tiny).parent.parent}"]).with_absolute_paths()
    tree = load_tree(cfg.tree.file, cfg.tree.levels)
    Manifest.create(cfg.run_dir / "manifest.json", tree, cfg.to_dict(), cfg.run_name)
    shutil.copytree(merged[0], cfg.run_dir / "final" / "deu_Latn")
    shutil.copytree(compact[0], cfg.run_dir / "final" / "nld_Latn")
    for code, whole in (("deu_Latn", True), ("nld_Latn", False)):
        gen = load_generator(cfg.run_dir, code, device="cpu")
        assert gen.whole_model is whole
        outputs = gen(["(w / want-01 :ARG0 (g / girl))"])
        assert len(outputs) == 1 and isinstance(outputs[0], str)
        assert isinstance(gen.model, PeftModel) is not whole


def test_fft_runs_export_their_whole_model(tiny, tmp_path):
    """The one entry point serves fft runs too: their leaf's state is the whole model, whatever export.mode."""
    from hql_ray.training.handoff import full_state

    model = load_base_model(tiny, "fft", CPU)
    with torch.no_grad():
        model.lm_head.weight.mul_(1.5)  # not the base
    state_dir = save_adapter_state(full_state(model), tmp_path / "node" / "adapter")
    cfg = _cfg("compact")
    cfg.model.mode, cfg.data.cache_dir = "fft", str(tmp_path / "cache")  # its base: built under the test's folder
    info = export_modes.export_language(cfg, [state_dir], tmp_path / "deu_Latn", tiny)
    assert info == ExportInfo("full", export_modes.dir_bytes(tmp_path / "deu_Latn"))
    torch.testing.assert_close(_logits(AutoModelForSeq2SeqLM.from_pretrained(str(tmp_path / "deu_Latn"))), _logits(model))


class HalfPrecisionAdapter(Exporter):
    """A toy export mode: the exact chain as one PEFT adapter stored in float16."""

    name = "adapter-fp16"
    help = "the exact chain of the path's node adapters as one PEFT adapter, stored in float16"

    def write(self, kit, chain_dirs, out_dir):
        kit.adapter(chain_dirs, out_dir, dtype="float16")
        return ExportInfo(self.name)


def test_a_new_export_mode_is_one_class_and_one_registry_line(tiny, chain_dirs, exact, tmp_path, monkeypatch):
    """The config, the export, the model card and loading all follow the registry."""
    from hql_ray.settings.config import make_config

    monkeypatch.setitem(EXPORT_MODES, HalfPrecisionAdapter.name, HalfPrecisionAdapter())  # the registry line
    assert make_config(overrides=["export.mode=adapter-fp16"]).export.mode == "adapter-fp16"  # accepted
    out = tmp_path / "deu_Latn"
    info = export_modes.export_language(_cfg("adapter-fp16"), chain_dirs, out, tiny)
    assert info == ExportInfo("adapter-fp16", export_modes.dir_bytes(out))
    with safe_open(str(out / "adapter_model.safetensors"), framework="pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}
    diff = (_adapter_logits(tiny, out) - exact[1]).abs().max().item()
    assert 0 < diff <= BF16_TOL, diff  # what PeftModel.from_pretrained loads: the exact chain, rounded to fp16
    card = _card(info)
    assert "- **Export**: `adapter-fp16`, the exact chain of the path's node adapters as one PEFT adapter, stored in " \
           "float16" in card and "library_name: peft" in card and "PeftModel.from_pretrained" in card
    monkeypatch.delitem(EXPORT_MODES, HalfPrecisionAdapter.name)
    with pytest.raises(Exception, match="export.mode must be one of adapter, adapter-bf16, merged, compact"):
        make_config(overrides=["export.mode=adapter-fp16"])
