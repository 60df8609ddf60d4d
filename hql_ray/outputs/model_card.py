"""The model card of an exported language model: `final/<code>/README.md`, the Hugging Face convention.

YAML front matter (read by the Hub, and by `hql-ray generate` for the prompt) and a short text: which
base model and quantization the adapter was trained against, the prompt with the language's name, the
path through the tree, the training data, the scores per test set, and how to load it. What the card
says of the export mode (its line, whether it loads without PEFT) is the mode's own
(`hql_ray.settings.exports`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from hql_ray.data.dataset import make_pair
from hql_ray.outputs.export import base_model_reference
from hql_ray.settings.config import Config
from hql_ray.settings.exports import FULL_EXPORT, exporter_named
from hql_ray.settings.records import ExportInfo, NodeMetrics, TestSetScores
from hql_ray.settings.tree import LanguageTree

CARD = "README.md"
METRICS = (("spbleu", "spBLEU"), ("bleu_13a", "BLEU (13a)"), ("chrf++", "chrF++"), ("lid", "LID"),
           ("lid_diff", "LID diff"), ("f1", "smatch F1"))
EXAMPLE_AMR = "(w / want-01 :ARG0 (b / boy))"
EXAMPLE_TEXT = "The boy wants to go."


@dataclass
class CardInfo:
    """What final/<code>/README.md says."""

    code: str
    language: str
    direction: str
    prompt: str
    tree_path: list[str]
    handoff: str
    mode: str
    base_model: str
    base_ref: str  # what the base is loaded from
    run: str
    quantization: dict | None
    lora_rank: int | None
    target_modules: list[str]
    data: str
    scores: dict[str, TestSetScores] = field(default_factory=dict)
    export: ExportInfo | None = None

    @property
    def exporter(self):
        return exporter_named(self.export.mode if self.export else None) or (FULL_EXPORT if self.mode == "fft"
                                                                            else None)


def card_info(cfg: Config, tree: LanguageTree, node_id: str, code: str, out_dir: Path, metrics: NodeMetrics | None,
              export: ExportInfo | None) -> CardInfo:
    """The card of language `code`, exported from leaf `node_id` of the run of `cfg` into `out_dir`."""
    adapter_cfg = out_dir / "adapter_config.json"
    cap = cfg.data.max_train_per_corpus
    corpora = ", ".join(cfg.data.corpora or ["amr3", "flores"])
    return CardInfo(
        code, tree.language_name(code), cfg.data.direction,
        make_pair(cfg.data.direction, tree.language_name(code), "{amr}", "{text}")[0],
        [a.id for a in tree.ancestors(node_id)] + [node_id], cfg.model.handoff, cfg.model.mode, cfg.model.base,
        base_model_reference(cfg), cfg.run_name,
        {"quant_type": cfg.model.quant_type, "double_quant": cfg.model.double_quant,
         "compute_dtype": cfg.model.compute_dtype} if cfg.model.mode == "qlora" else None,
        json.loads(adapter_cfg.read_text())["r"] if adapter_cfg.is_file() else None,
        sorted(cfg.model.lora.target_modules),
        f"the {corpora} training splits of every language under each node of the path"
        + (f", at most {cap} examples per corpus and language" if cap else "") + f" ({Path(cfg.data.dir).name}/)",
        dict((metrics.languages if metrics else {}).get(code) or {}),
        export,
    )


def load_lines(info: CardInfo) -> list[str]:
    """How to load it and generate one sentence: the whole model from its folder, or the run's base (as it
    was trained: 4-bit with qlora) with the adapter."""
    tail = [f"tokenizer = AutoTokenizer.from_pretrained({info.base_ref!r})",
            f"inputs = tokenizer({info.prompt.replace('{amr}', EXAMPLE_AMR)!r}, return_tensors='pt')"
            if info.direction == "amr2text" else
            f"inputs = tokenizer({info.prompt.replace('{text}', EXAMPLE_TEXT)!r}, return_tensors='pt')",
            "print(tokenizer.decode(model.generate(**inputs, max_new_tokens=128)[0], skip_special_tokens=True))"]
    if info.exporter is not None and info.exporter.whole_model:
        return ["from transformers import AutoModelForSeq2SeqLM, AutoTokenizer",
                f"model = AutoModelForSeq2SeqLM.from_pretrained('final/{info.code}')", *tail]
    lines = ["from peft import PeftModel", "from transformers import AutoModelForSeq2SeqLM, AutoTokenizer"]
    if info.mode == "qlora":
        quant = info.quantization
        lines += ["from transformers import BitsAndBytesConfig",
                  f"quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type={quant['quant_type']!r}, "
                  f"bnb_4bit_use_double_quant={quant['double_quant']})",
                  f"base = AutoModelForSeq2SeqLM.from_pretrained({info.base_ref!r}, quantization_config=quant)"]
    else:
        lines += [f"base = AutoModelForSeq2SeqLM.from_pretrained({info.base_ref!r})"]
    return lines + [f"model = PeftModel.from_pretrained(base, 'final/{info.code}')", *tail]


def card_text(info: CardInfo) -> str:
    exporter = info.exporter
    front = {
        "library_name": "transformers" if exporter is not None and exporter.whole_model else "peft",
        "base_model": info.base_model,
        "language": [info.code.split("_")[0]],
        "tags": ["amr-to-text" if info.direction == "amr2text" else "text-to-amr", "hql-ray", info.mode]
        + ([f"export-{info.export.mode}"] if info.export else []),
        "hql_ray": {"language": info.code, "language_name": info.language, "direction": info.direction,
                    "prompt": info.prompt, "tree_path": info.tree_path, "handoff": info.handoff,
                    "quantization": info.quantization, "lora_rank": info.lora_rank},
    }
    if info.export:
        front["hql_ray"]["export"] = info.export.to_json()
    quant = info.quantization
    lines = [
        "---", yaml.safe_dump(front, sort_keys=False, allow_unicode=True).rstrip(), "---", "",
        f"# {info.language} ({info.code}): {'AMR-to-text' if info.direction == 'amr2text' else 'text-to-AMR'}",
        "",
        f"Trained with hql-ray (hierarchical QLoRA) down the tree path {' → '.join(info.tree_path)}, "
        f"hand-off `{info.handoff}`, from the run `{info.run}`.",
        "",
        f"- **Base model**: `{info.base_model}`, trained as `{info.mode}`"
        + (f" over its 4-bit quantization ({quant['quant_type']}, double quant {quant['double_quant']}, compute "
           f"{quant['compute_dtype']}): load the base the same way for the scores below." if info.mode == "qlora"
           else "."),
        f"- **Prompt** (the model input, exactly): `{info.prompt}`",
        f"- **Training data**: {info.data}",
    ]
    if info.lora_rank:
        lines.append(f"- **Adapter**: one LoRA of rank {info.lora_rank} on {', '.join(info.target_modules)}")
    if exporter is not None and info.export is not None:
        lines.append(exporter.card_line(info.export, info.mode))
    lines += score_table(info.scores)
    lines += ["", "## Load it", "", "```python", *load_lines(info), "```", ""]
    return "\n".join(lines)


def score_table(scores: dict[str, TestSetScores]) -> list[str]:
    shown = [(key, name) for key, name in METRICS if any(s.value(key) is not None for s in scores.values())]
    if not scores:
        return []
    lines = ["", "| test set | n | " + " | ".join(name for _, name in shown) + " |",
             "|---|---|" + "---|" * len(shown)]
    for test_set, s in sorted(scores.items()):
        lines.append(f"| {test_set} | {s.n} | " + " | ".join(_fmt(s.value(key)) for key, _ in shown) + " |")
    return lines


def _fmt(value) -> str:
    return f"{value:.2f}" if isinstance(value, (int, float)) else "-"


def write_model_card(out_dir: str | Path, info: CardInfo) -> Path:
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
