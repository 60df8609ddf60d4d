"""The dry run with real LoRA shapes (`--simulate-adapters real`) and what the head keeps of adapters.

Real shapes come from the model config on the meta device; the driver saves each node's adapter,
hands it to children through the object store only while a node still to run needs it, and exports a
leaf by reading the saved node adapters from disk one module at a time (no chain in memory).
"""

from __future__ import annotations

import pytest

import torch
from safetensors.torch import load_file

from conftest import tiny_overrides
from hql_ray.outputs import export, model_card
from hql_ray.training import modeling
from hql_ray.training.handoff import attach_node_adapter, node_adapter_state
from hql_ray.training.adapter_algebra import concat_adapters
from hql_ray.training.adapter_files import load_adapter_state, state_checksum
from hql_ray.settings.config import LoraShape, make_config
from hql_ray.orchestration.driver import Driver
from hql_ray.training.simulate import Simulation, lora_shapes


def shapes_key(lora: LoraShape) -> tuple:
    return tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in sorted(lora.to_state().items()))


def test_mt5_large_shapes_are_the_papers():
    shapes = lora_shapes("google/mt5-large", shapes_key(LoraShape()))  # r=256 on every linear layer
    assert len(shapes) == 2 * (7 * 24 + 11 * 24)  # A and B; encoder 7 modules a layer, decoder 4 more (cross-attention)
    assert sum(torch.Size(s).numel() for s in shapes.values()) == 292_552_704  # 1.17 GB in fp32


def test_tiny_shapes_match_a_real_node_adapter(tmp_path):
    lora = LoraShape(r=4)
    model = modeling.load_base_model(modeling.resolve_base_model("tiny", tmp_path), "lora", torch.device("cpu"))
    real = node_adapter_state(attach_node_adapter(model, lora, "stack", []))
    assert lora_shapes("tiny", shapes_key(lora)) == {k: tuple(v.shape) for k, v in real.tensors.items()}


@pytest.mark.slow  # 50-140 s: the default suite stays under 15 min
def test_dry_run_with_real_shapes_exports_the_exact_stack(ray_session, small_corpus, four_language_tree, tmp_path):
    cfg = make_config(overrides=tiny_overrides(tmp_path, small_corpus, four_language_tree, **{
        "run.name": "shapes", "resources.num_gpus": 0}))
    manifest = Driver(cfg, simulation=Simulation(0.0, adapters="real")).run()
    assert {e.status for e in manifest.nodes.values()} == {"done"}
    run_dir = cfg.run_dir
    leaf = manifest.nodes["language.German"]
    assert leaf.exported == ["deu_Latn"]
    # The leaf's export is the in-memory concatenation of its saved chain, bit for bit.
    chain = [load_adapter_state(run_dir / manifest.nodes[n].adapter) for n in leaf.handed_from]
    chain.append(load_adapter_state(run_dir / leaf.adapter))
    assert len(chain) == 3 and len({state_checksum(s) for s in chain}) == 3
    expected = concat_adapters(chain)
    written = load_file(str(run_dir / "final" / "deu_Latn" / "adapter_model.safetensors"))
    assert sorted(written) == sorted(expected.tensors)
    assert all(torch.equal(written[k], expected.tensors[k]) for k in written)
    assert expected.config["r"] == 12  # three rank-4 adapters stacked
    # and it loads as a standard PEFT adapter on the tiny base
    from peft import PeftModel
    base = modeling.load_base_model(export.base_model_reference(cfg), "lora", torch.device("cpu"))
    peft = PeftModel.from_pretrained(base, str(run_dir / "final" / "deu_Latn"))
    assert peft.peft_config["default"].r == 12
    # Its model card: base, quantization, prompt, path, data; `hql-ray generate` takes the prompt from it.
    card = model_card.card_fields(run_dir / "final" / "deu_Latn")
    assert card["prompt"] == "Translate to German: {amr}" and card["lora_rank"] == 12
    assert card["tree_path"] == ["level0.Indo_European", "level1.Germanic", "language.German"]
    # the compute dtype the run used (CPU workers: float32), not the config's "auto"
    assert card["quantization"] == {"quant_type": "nf4", "double_quant": True, "compute_dtype": "float32"}
    text = (run_dir / "final" / "deu_Latn" / "README.md").read_text()
    assert text.startswith("---\n") and "\nlibrary_name: peft\n" in text.split("\n---\n")[0]
    assert "PeftModel.from_pretrained(base, 'final/deu_Latn')" in text
