"""Finished runs built cheaply for the serving tests and benchmark: the run folder the driver leaves
(manifest.json, nodes/<leaf>/adapter, final/<code>/ with its model card), written by the real export code
from node adapters with seeded random factors, so that every language's outputs differ."""

from __future__ import annotations

from pathlib import Path

FOUR = [("deu_Latn", "German"), ("nld_Latn", "Dutch"), ("ita_Latn", "Italian"), ("spa_Latn", "Spanish")]
TWELVE = FOUR + [("ltz_Latn", "Luxembourgish"), ("eng_Latn", "English"), ("tpi_Latn", "Tok_Pisin"),
                 ("lim_Latn", "Limburgish"), ("scn_Latn", "Sicilian"), ("ast_Latn", "Asturian"),
                 ("fra_Latn", "French"), ("hat_Latn", "Haitian_Creole")]
GRAPHS = [
    "(w / want-01 :ARG0 (g / girl) :ARG1 (s / sing-01 :ARG0 g))",
    "(f / find-01 :ARG0 (c / cat) :ARG1 (a / apple) :polarity -)",
    '(p / person :name (n / name :op1 "Anna (the) cat"))',
    "(r / rain-01 :time (t / today))",
]
SENTENCES = ["The girl wants to sing.", "The cat did not find the apple.", "It rains today."]


def random_base(folder: Path, d_model: int = 256, layers: int = 4, d_ff: int = 1024) -> str:
    """A random mT5-shaped model bigger than "tiny" (for memory measurements), with the byte-level tokenizer."""
    import torch
    from transformers import ByT5Tokenizer, MT5Config, MT5ForConditionalGeneration

    if (folder / "config.json").is_file():
        return str(folder)
    tok = ByT5Tokenizer()
    config = MT5Config(vocab_size=len(tok), d_model=d_model, d_kv=64, d_ff=d_ff, num_layers=layers,
                       num_decoder_layers=layers, num_heads=4, decoder_start_token_id=0, pad_token_id=0,
                       eos_token_id=1, tie_word_embeddings=False)
    torch.manual_seed(0)
    MT5ForConditionalGeneration(config).save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return str(folder)


def make_run(root: Path, languages=FOUR, *, name: str = "run", base: str = "tiny", mode: str = "qlora",
             export_mode: str = "adapter", direction: str = "amr2text", rank: int = 4, max_new_tokens: int = 8) -> Path:
    """A finished one-level run (every language a leaf) under root/runs/<name>; its folder."""
    from hql_ray.outputs import export
    from hql_ray.outputs.manifest import Manifest
    from hql_ray.settings.config import make_config
    from hql_ray.settings.tree import load_tree

    root.mkdir(parents=True, exist_ok=True)
    tree_file = root / f"{name}.csv"
    tree_file.write_text("code,level0,language\n" + "".join(f"{code},All,{lang}\n" for code, lang in languages))
    cfg = make_config(None, {}, [
        f"run.output_dir={root / 'runs'}", f"run.name={name}", f"data.dir={root / 'data'}", f"tree.file={tree_file}",
        "tree.levels=[language]", f"model.base={base}", f"model.mode={mode}", f"model.lora.r={rank}",
        f"export.mode={export_mode}", f"data.direction={direction}", f"eval.max_new_tokens={max_new_tokens}",
        "data.max_source_length=128", "data.linearize.keep_wiki=false", f"data.cache_dir={root / 'cache'}",
    ]).with_absolute_paths()
    tree = load_tree(cfg.tree.file, cfg.tree.levels)
    manifest = Manifest.create(cfg.run_dir / "manifest.json", tree, cfg.to_dict(), cfg.run_name)
    base_ref = export.base_model_reference(cfg)
    for seed, (code, _) in enumerate(languages):
        leaf = tree.leaf_for(code)
        adapter = random_adapter(base_ref, rank, seed, cfg.run_dir / "nodes" / leaf.id / "adapter")
        info = write_final(cfg, tree, leaf.id, code, [adapter], base_ref)
        manifest.update(leaf.id, status="done", adapter=f"nodes/{leaf.id}/adapter", exported=[code],
                        exports={code: info})
    return cfg.run_dir


def random_adapter(base_ref: str, rank: int, seed: int, out_dir: Path) -> Path:
    """A node adapter (as the driver saves it) with seeded random factors large enough to change outputs."""
    import torch

    from hql_ray.settings.config import LoraShape
    from hql_ray.training.adapter_files import save_adapter_state
    from hql_ray.training.handoff import attach_node_adapter, node_adapter_state
    from hql_ray.training.modeling import load_base_model

    model = attach_node_adapter(load_base_model(base_ref, "lora", torch.device("cpu")),
                                LoraShape(r=rank, alpha=2 * rank, use_rslora=True), "stack", [])
    gen = torch.Generator().manual_seed(1000 + seed)
    with torch.no_grad():
        for pname, param in model.named_parameters():
            if param.requires_grad:
                param.copy_(torch.randn(param.shape, generator=gen) * (0.5 if "lora_A" in pname else 0.05))
    return save_adapter_state(node_adapter_state(model), out_dir)


def write_final(cfg, tree, leaf_id: str, code: str, chain: list[Path], base_ref: str):
    """final/<code>/ in the run's export mode, with the model card the driver writes; what the export holds
    (the `ExportInfo` the driver records in the manifest)."""
    from hql_ray.outputs import export_modes, layout, model_card

    out = layout.language_dir(code, cfg.run_dir)
    info = export_modes.export_language(cfg, chain, out, base_ref)
    model_card.write_model_card(out, model_card.card_info(cfg, tree, leaf_id, code, out, None, info))
    return info
