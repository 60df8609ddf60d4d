"""The model card of an exported language model: `final/<code>/README.md`, the Hugging Face convention.

YAML front matter (read by the Hub, and by `hql-ray generate` for the prompt) and a short text: which
base model and quantization the adapter was trained against, the prompt with the language's name, the
path through the tree, the training data, the scores per test set, and how to load it.
"""

from __future__ import annotations

from pathlib import Path

import yaml

CARD = "README.md"
METRICS = (("spbleu", "spBLEU"), ("bleu_13a", "BLEU (13a)"), ("chrf++", "chrF++"), ("lid", "LID"),
           ("lid_diff", "LID diff"), ("f1", "smatch F1"))


def card_text(info: dict) -> str:
    """`info`: plain fields (see `hql_ray.orchestration.driver.Driver._card_info`); "export", when there, is what
    `export_modes.export_language` returned (the export mode, its bytes, compact's logit error)."""
    export = info.get("export") or {}
    whole = info["mode"] == "fft" or export.get("mode") == "merged"
    front = {
        "library_name": "transformers" if whole else "peft",
        "base_model": info["base_model"],
        "language": [info["code"].split("_")[0]],
        "tags": ["amr-to-text" if info["direction"] == "amr2text" else "text-to-amr", "hql-ray", info["mode"]]
        + ([f"export-{export['mode']}"] if export.get("mode") else []),
        "hql_ray": {"language": info["code"], "language_name": info["language"], "direction": info["direction"],
                    "prompt": info["prompt"], "tree_path": info["tree_path"], "handoff": info["handoff"],
                    "quantization": info["quantization"], "lora_rank": info.get("lora_rank")},
    }
    if export:
        front["hql_ray"]["export"] = {k: v for k, v in export.items() if v is not None}
    quant = info["quantization"]
    lines = [
        "---", yaml.safe_dump(front, sort_keys=False, allow_unicode=True).rstrip(), "---", "",
        f"# {info['language']} ({info['code']}): {'AMR-to-text' if info['direction'] == 'amr2text' else 'text-to-AMR'}",
        "",
        f"Trained with hql-ray (hierarchical QLoRA) down the tree path {' → '.join(info['tree_path'])}, "
        f"hand-off `{info['handoff']}`, from the run `{info['run']}`.",
        "",
        f"- **Base model**: `{info['base_model']}`, trained as `{info['mode']}`"
        + (f" over its 4-bit quantization ({quant['quant_type']}, double quant {quant['double_quant']}, compute "
           f"{quant['compute_dtype']}): load the base the same way for the scores below." if info["mode"] == "qlora"
           else "."),
        f"- **Prompt** (the model input, exactly): `{info['prompt']}`",
        f"- **Training data**: {info['data']}",
    ]
    if info.get("lora_rank"):
        lines.append(f"- **Adapter**: one LoRA of rank {info['lora_rank']} on {', '.join(info['target_modules'])}")
    if export.get("mode"):
        lines.append(export_line(export, info["mode"]))
    scores = info.get("scores") or {}
    if scores:
        lines += ["", "| test set | n | " + " | ".join(name for key, name in METRICS if _any(scores, key)) + " |",
                  "|---|---|" + "---|" * sum(1 for key, _ in METRICS if _any(scores, key))]
        for test_set, s in sorted(scores.items()):
            cells = [_fmt(s.get(key)) for key, _ in METRICS if _any(scores, key)]
            lines.append(f"| {test_set} | {s.get('n', '-')} | " + " | ".join(cells) + " |")
    lines += ["", "## Load it", "", "```python", *load_lines(info), "```", ""]
    return "\n".join(lines)


EXPORTS = {
    "adapter": "the exact chain of the path's node adapters as one PEFT adapter (fp32)",
    "adapter-bf16": "the exact chain of the path's node adapters as one PEFT adapter, stored in bf16",
    "merged": "a whole model (bf16, with its tokenizer): the full-precision base with the chain's deltas "
              "added to its weights; it loads without PEFT",
    "compact": "the chain re-projected to one lower-rank PEFT adapter by truncated SVD per module",
    "full": "the whole fully fine-tuned model",
}


def export_line(export: dict, trained: str = "") -> str:
    """The card's line on the export mode (compact: its measured logit error; merged after qlora: the base differs)."""
    mode = export["mode"]
    line = f"- **Export**: `{mode}`, {EXPORTS.get(mode, mode)}"
    if mode == "compact" and export.get("logit_max_abs_error") is not None:
        line += (f" (rank {export.get('rank')}); its logits differ from the exact chain's by at most "
                 f"{export['logit_max_abs_error']:.3g} (relative error {export['logit_rel_error']:.3g}) "
                 "on a fixed batch of 4 random sequences, base in fp32")
    if mode == "merged" and trained == "qlora":
        line += (" (the adapters were trained over the 4-bit base: merged into the full-precision one, its "
                 "outputs can differ slightly from the scores below)")
    return line + (f"; {export['bytes'] / 1e6:.1f} MB on disk." if export.get("bytes") is not None else ".")


def load_lines(info: dict) -> list[str]:
    """How to load it: the driver's lines, or for a merged export the whole model from its folder (no PEFT)."""
    load = list(info["load"])
    if (info.get("export") or {}).get("mode") != "merged" or info["mode"] == "fft":
        return load
    tail = next((i for i, line in enumerate(load) if line.startswith("tokenizer =")), len(load))
    return ["from transformers import AutoModelForSeq2SeqLM, AutoTokenizer",
            f"model = AutoModelForSeq2SeqLM.from_pretrained('final/{info['code']}')", *load[tail:]]


def _any(scores: dict, key: str) -> bool:
    return any(isinstance(s, dict) and s.get(key) is not None for s in scores.values())


def _fmt(value) -> str:
    return f"{value:.2f}" if isinstance(value, (int, float)) else "-"


def write_model_card(out_dir: str | Path, info: dict) -> Path:
    path = Path(out_dir) / CARD
    path.write_text(card_text(info), encoding="utf-8")
    return path


def card_fields(model_dir: str | Path) -> dict:
    """The card's `hql_ray` front-matter fields ({} when there is no card, e.g. an older run)."""
    path = Path(model_dir) / CARD
    if not path.is_file():
        return {}
    text = path.read_text(encoding="utf-8")
    if not text.startswith("---\n"):
        return {}
    front = yaml.safe_load(text[4:text.index("\n---", 4)]) or {}
    return dict(front.get("hql_ray") or {})
