"""The model card of an exported language model: `final/<code>/README.md`, the Hugging Face convention.

Its metadata is `huggingface_hub`'s `ModelCardData` (what the Hub indexes: base model, language as ISO 639-1 where
the language has such a code, license, datasets, pipeline tag, eval results per test set, tags) plus our own
`hql_ray:` block, which `hql-ray generate` reads (`card_fields`: the prompt, the tree path, the quantization).
The text says which base model and quantization the adapter was trained against (the compute dtype the run
used, not "auto"), the prompt with the language's name, the path through the tree, the training data, the
scores per test set, and how to load it: from the run folder (`final/<code>`), or from the Hub once pushed
(`CardPlace`, `hql-ray push`). What the card says of the export mode is the mode's own
(`hql_ray.settings.exports`).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from hql_ray.data.dataset import make_pair
from hql_ray.outputs import layout
from hql_ray.outputs.export import base_model_reference
from hql_ray.settings.config import TINY_BASES, Config
from hql_ray.settings.exports import FULL_EXPORT, exporter_named
from hql_ray.settings.records import ExportInfo, NodeMetrics, TestSetScores
from hql_ray.settings.tree import LanguageTree
from hql_ray.training.modeling import compute_dtype_name

CARD = "README.md"
LICENSE = "apache-2.0"  # the package's licence (pyproject.toml), and the exported models'
# transformers 5 has no text2text-generation pipeline: the Hub files seq2seq generators under text-generation.
PIPELINE_TAG = "text-generation"
METRICS = (("spbleu", "spBLEU"), ("bleu_13a", "BLEU (13a)"), ("chrf++", "chrF++"), ("lid", "LID"),
           ("lid_diff", "LID diff"), ("f1", "smatch F1"))
# Our metric -> the Hub's eval result (metric type, name, config, args).
HUB_METRICS = {
    "spbleu": ("bleu", "spBLEU (flores200 tokenizer)", "flores200", None),
    "bleu_13a": ("bleu", "BLEU (13a)", "13a", None),
    "chrf++": ("chrf", "chrF++", None, {"word_order": 2}),
    "lid": ("accuracy", "LID (GlotLID probability of the language)", None, None),
    "lid_diff": ("accuracy", "LID diff (minus the references' LID)", None, None),
    "f1": ("smatch", "smatch F1", None, None),
}
# Corpora with a dataset on the Hub (the others are named in the card's text and the hql_ray block).
HUB_DATASETS = {"flores": "facebook/flores"}
TEST_SET_NAMES = {"flores": "FLORES-200 test split (silver AMRs)", "ldc2020t07": "LDC2020T07 (AMR 2.0 test, 4 languages)",
                  "amr3": "AMR 3.0 test split (machine-translated sentences)"}
EXAMPLE_AMR = "(w / want-01 :ARG0 (b / boy))"
EXAMPLE_TEXT = "The boy wants to go."


@dataclass
class CardPlace:
    """Where the card's model is loaded from: the run folder (`final/<code>`), or a Hub repository (a folder of it
    with `subfolder`); `base`/`base_subfolder`: a base shipped in the repository (the demo's tiny one)."""

    model: str
    subfolder: str | None = None
    base: str | None = None
    base_subfolder: str | None = None


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
    compute_dtype: str | None = None  # what the run computed in (None: the quantization's, else float32)
    corpora: list[str] = field(default_factory=list)
    synthetic_data: bool = False  # the bundled sample: no Hub dataset to name
    place: CardPlace | None = None  # None: the run folder's final/<code>
    seen: dict[str, list[str]] = field(default_factory=dict)  # node of the path -> languages it was trained on
    node: str | None = None  # an inner node's own model (final/nodes/<node>/; export.nodes all): code is its id
    prompt_language: str = ""  # a node's card: the language its load example names in the prompt

    @property
    def folder(self) -> str:
        """Where the export is, in the run folder."""
        return str(layout.node_dir(self.node) if self.node else layout.language_dir(self.code))

    @property
    def exporter(self):
        return exporter_named(self.export.mode if self.export else None) or (FULL_EXPORT if self.mode == "fft"
                                                                            else None)

    @property
    def dtype(self) -> str:
        """The dtype the run computed in, by name (a card built without it: float32, the CPU's)."""
        named = self.compute_dtype or (self.quantization or {}).get("compute_dtype")
        return named if named and named != "auto" else "float32"

    @property
    def where(self) -> CardPlace:
        return self.place or CardPlace(self.folder)

    @property
    def hub_base(self) -> str | None:
        """The base as the Hub's `base_model` (a Hub id; not a built-in tiny base nor a local folder)."""
        if self.base_model in TINY_BASES or self.base_model.startswith(("/", ".", "~")) or self.base_model.count("/") > 1:
            return None
        return self.base_model


def card_info(cfg: Config, tree: LanguageTree, node_id: str, code: str, out_dir: Path, metrics: NodeMetrics | None,
              export: ExportInfo | None, seen: dict[str, list[str]] | None = None, cuda: bool = False) -> CardInfo:
    """The card of language `code`, exported from leaf `node_id` of the run of `cfg` into `out_dir`; `seen`: the
    languages each node of the path was trained on (default: the tree's; a grown run's kept nodes saw fewer);
    `cuda`: the run's workers computed on CUDA (the compute dtype "auto" resolves to bf16 there)."""
    from hql_ray.settings.bundled import is_sample

    path = [a.id for a in tree.ancestors(node_id)] + [node_id]
    adapter_cfg = out_dir / "adapter_config.json"
    cap = cfg.data.max_train_per_corpus
    corpora = list(cfg.data.corpora or ["amr3", "flores"])
    dtype = compute_dtype_name(cfg.model.mode, cfg.model.compute_dtype, cuda)
    return CardInfo(
        code, tree.language_name(code), cfg.data.direction,
        make_pair(cfg.data.direction, tree.language_name(code), "{amr}", "{text}")[0],
        path, cfg.model.handoff, cfg.model.mode, cfg.model.base,
        base_model_reference(cfg), cfg.run_name,
        {"quant_type": cfg.model.quant_type, "double_quant": cfg.model.double_quant,
         "compute_dtype": dtype} if cfg.model.mode == "qlora" else None,
        json.loads(adapter_cfg.read_text())["r"] if adapter_cfg.is_file() else None,
        sorted(cfg.model.lora.target_modules),
        f"the {', '.join(corpora)} training splits of every language under each node of the path"
        + (f", at most {cap} examples per corpus and language" if cap else "") + f" ({Path(cfg.data.dir).name}/)",
        dict((metrics.languages if metrics else {}).get(code) or {}),
        export, dtype, corpora, is_sample(cfg.data.dir),
        seen={n: list((seen or {}).get(n) or tree.nodes[n].codes) for n in path},
    )


def node_card_info(cfg: Config, tree: LanguageTree, node_id: str, out_dir: Path, metrics: NodeMetrics | None,
                   export: ExportInfo | None, seen: dict[str, list[str]] | None = None,
                   cuda: bool = False) -> CardInfo:
    """The card of inner node `node_id`'s own model (final/nodes/<id>/): a family's model, for a language
    without one of its own; its prompt names the language ("{language}"), its scores are its languages'."""
    info = card_info(cfg, tree, node_id, tree.nodes[node_id].codes[0], out_dir, None, export, seen, cuda)
    trained = info.seen[node_id]
    languages = metrics.languages if metrics else {}
    return dataclasses.replace(
        info, code=node_id, language=tree.nodes[node_id].name, node=node_id,
        prompt=make_pair(cfg.data.direction, "{language}", "{amr}", "{text}")[0],
        prompt_language=tree.language_name(trained[0]),
        scores={f"{code} {test_set}": scores for code in trained
                for test_set, scores in sorted((languages.get(code) or {}).items())})


def ran_on_cuda(manifest) -> bool:
    """Whether a run's workers computed on CUDA, as its record says from its start (its slots)."""
    return bool((manifest.data.get("slots") or {}).get("cuda"))


def hub_language(code: str) -> str:
    """A FLORES code as the Hub's language filter wants it: ISO 639-1 where the language has one (deu_Latn -> de),
    else its ISO 639-3 code (tpi_Latn -> tpi)."""
    import pycountry

    iso = code.split("_")[0].lower()
    found = pycountry.languages.get(alpha_3=iso) if len(iso) == 3 else None
    return getattr(found, "alpha_2", None) or iso


def _sources(info: CardInfo) -> tuple[list[str], str, str]:
    """(set-up lines, the model's folder, the base's) as Python expressions. A folder of a repository is fetched
    with snapshot_download first: `subfolder=` loading is uneven across transformers and PEFT (PEFT 0.21 looks
    for the folder twice when offline)."""
    where = info.where
    base = repr(where.base or info.base_ref)
    if not where.subfolder:
        return [], repr(where.model), base
    folders = [where.subfolder] + ([where.base_subfolder] if where.base and where.base_subfolder else [])
    setup = ["from huggingface_hub import snapshot_download",
             f"repo = snapshot_download({where.model!r}, allow_patterns={[f + '/*' for f in folders]!r})"]
    if where.base and where.base_subfolder:
        base = f"f'{{repo}}/{where.base_subfolder}'"
    return setup, f"f'{{repo}}/{where.subfolder}'", base


def load_lines(info: CardInfo) -> list[str]:
    """How to load it and generate one sentence, in the run's compute dtype: the whole model from its folder, or
    the run's base (as it was trained: 4-bit with qlora) with the adapter."""
    dtype = f"torch.{info.dtype}"
    setup, model, base = _sources(info)
    whole = info.exporter is not None and info.exporter.whole_model
    # a whole model's folder holds its tokenizer (but the random tiny base's, which `generate` builds)
    tokenizer_from = model if whole and info.base_model != "tiny" else base
    prompt = info.prompt.replace("{language}", info.prompt_language)
    example = prompt.replace("{amr}", EXAMPLE_AMR) if info.direction == "amr2text" else \
        prompt.replace("{text}", EXAMPLE_TEXT)
    tail = [f"tokenizer = AutoTokenizer.from_pretrained({tokenizer_from})",
            f"inputs = tokenizer({example!r}, return_tensors='pt').to(model.device)",
            "print(tokenizer.decode(model.generate(**inputs, max_new_tokens=128)[0], skip_special_tokens=True))"]
    lines = ["import torch"] + ([] if whole else ["from peft import PeftModel"]) + \
        ["from transformers import AutoModelForSeq2SeqLM, AutoTokenizer"] + setup
    if whole:
        return lines + [f"model = AutoModelForSeq2SeqLM.from_pretrained({model}, dtype={dtype})", *tail]
    if info.mode == "qlora":
        quant = info.quantization
        lines += ["from transformers import BitsAndBytesConfig",
                  f"quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type={quant['quant_type']!r}, "
                  f"bnb_4bit_use_double_quant={quant['double_quant']}, bnb_4bit_compute_dtype={dtype})",
                  f"base = AutoModelForSeq2SeqLM.from_pretrained({base}, quantization_config=quant, "
                  f"dtype={dtype}, device_map='auto')"]
    else:
        lines += [f"base = AutoModelForSeq2SeqLM.from_pretrained({base}, dtype={dtype})"]
    return lines + [f"model = PeftModel.from_pretrained(base, {model}).eval()", *tail]


def eval_results(info: CardInfo) -> list:
    """The Hub's eval results: one per test set and metric scored."""
    from huggingface_hub import EvalResult

    task = "AMR-to-text generation" if info.direction == "amr2text" else "text-to-AMR parsing"
    out = []
    for test_set, scores in sorted(info.scores.items()):
        dataset = (None if info.synthetic_data else HUB_DATASETS.get(test_set)) or test_set
        name = TEST_SET_NAMES.get(test_set, f"{test_set} test split")
        if info.synthetic_data:
            name = f"{name}, hql-ray's synthetic sample"
        for key, _ in METRICS:
            value = scores.value(key)
            if value is None:
                continue
            metric, metric_name, config, args = HUB_METRICS[key]
            out.append(EvalResult(task_type=PIPELINE_TAG, task_name=task, dataset_type=dataset, dataset_name=name,
                                  dataset_split="test", metric_type=metric, metric_name=metric_name,
                                  metric_config=config, metric_args=args, metric_value=round(value, 4)))
    return out


def card_data(info: CardInfo):
    """The card's metadata as `huggingface_hub.ModelCardData`, our `hql_ray` block included."""
    from huggingface_hub import ModelCardData

    exporter = info.exporter
    own = ({"language": info.code, "language_name": info.language} if info.node is None else
           {"node": info.node, "node_name": info.language})
    codes = info.seen.get(info.node, []) if info.node else [info.code]
    block = {**own, "direction": info.direction,
             "prompt": info.prompt, "tree_path": info.tree_path, "handoff": info.handoff,
             "quantization": info.quantization, "compute_dtype": info.dtype, "lora_rank": info.lora_rank,
             "base_model": info.base_model, "corpora": info.corpora}
    if info.seen:
        block["trained_languages"] = info.seen
    if info.export:
        block["export"] = info.export.to_json()
    place = info.place
    if place is not None and place.base:  # a pushed base (the tiny ones): where `generate` finds it
        block.update({"base_repo": place.base, "base_subfolder": place.base_subfolder})
    results = eval_results(info)
    datasets = [] if info.synthetic_data else [HUB_DATASETS[c] for c in info.corpora if c in HUB_DATASETS]
    return ModelCardData(
        base_model=place.base if place is not None and place.base and not place.base_subfolder else info.hub_base,
        datasets=datasets or None, language=list(dict.fromkeys(hub_language(c) for c in codes)),
        library_name="transformers" if exporter is not None and exporter.whole_model else "peft",
        license=LICENSE, pipeline_tag=PIPELINE_TAG,
        tags=["amr-to-text" if info.direction == "amr2text" else "text-to-amr", "hql-ray", "hierarchical-qlora",
              info.mode] + ([f"export-{info.export.mode}"] if info.export else []),
        model_name=f"hql-ray {info.language} ({info.code}) {info.run}" if results else None,
        eval_results=results or None, hql_ray=block)


def card_text(info: CardInfo) -> str:
    exporter = info.exporter
    quant = info.quantization
    what = "AMR-to-text" if info.direction == "amr2text" else "text-to-AMR"
    lines = [
        "---", card_data(info).to_yaml(), "---", "",
        f"# {info.language} ({info.code}): {what}" + (" for the family" if info.node else ""), "",
        f"Trained with hql-ray (hierarchical QLoRA: Soto Martinez, Parmentier and Gardent, INLG 2024) down the tree "
        f"path {' → '.join(info.tree_path)}, hand-off `{info.handoff}`, from the run `{info.run}`.",
        *_node_lines(info),
        "",
        f"- **Base model**: `{info.base_model}`, trained as `{info.mode}`"
        + (f" over its 4-bit quantization ({quant['quant_type']}, double quant {quant['double_quant']}, compute "
           f"{info.dtype}): load the base the same way for the scores below." if info.mode == "qlora"
           else f", computing in {info.dtype}."),
        f"- **Prompt** (the model input, exactly; the AMR linearized on one line as in training, which "
        f"`hql-ray generate` does): `{info.prompt}`",
        f"- **Training data**: {info.data}" + (" (the bundled synthetic sample)" if info.synthetic_data else ""),
    ]
    if info.seen:
        lines.append("- **Languages each node of the path was trained on**: "
                     + "; ".join(f"`{n}`: {', '.join(codes)}" for n, codes in info.seen.items()))
    if info.lora_rank:
        lines.append(f"- **Adapter**: one LoRA of rank {info.lora_rank} on {', '.join(info.target_modules)}")
    if exporter is not None and info.export is not None:
        lines.append(exporter.card_line(info.export, info.mode))
    lines += score_table(info.scores)
    lines += ["", "## Load it", "", "```python", *load_lines(info), "```", ""]
    return "\n".join(lines)


def _node_lines(info: CardInfo) -> list[str]:
    """A node's card: what the model is for (a language of the family without a model of its own)."""
    if not info.node:
        return []
    return ["", f"The own model of the inner node `{info.node}`, trained on {', '.join(info.seen.get(info.node, []))}. "
            "For a language of this family without a model of its own, put that language's name in the prompt "
            f"(`{{language}}` below; `hql-ray generate RUN --node {info.node} --lang CODE` does it)."]


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
