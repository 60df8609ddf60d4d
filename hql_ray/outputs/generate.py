"""Use a trained language: AMR graphs in, sentences out (or sentences in, AMRs out for text2amr runs).

A run's exported leaf `RUN_DIR/final/<code>/` is a standard PEFT adapter over the run's base model
(export modes adapter, adapter-bf16, compact) or a whole model (fft runs; export mode merged). Inputs
are prepared exactly as training prepared them: the run's linearization options, the prompt of
`dataset.make_pair`, the language's name from the run's tree, and the run's max source length
(longer inputs are clipped, as they were in training, and flagged). A model `hql-ray push` put on the Hub
loads the same way from its id (`hf://owner/name` or `owner/name`) or from a local copy of its repository
(`model_folder`, `outputs.hub_layout`).

    gen = load_generator("runs/demo", "deu_Latn")
    gen(["(w / want-01 :ARG0 (g / girl))"])          # -> ["Das Mädchen will."]
    load_generator("hf://me/hql-demo-deu_Latn", "deu_Latn")

With export.nodes all, an inner node's own model (final/nodes/<node id>/) serves a language without a model
of its own: `load_generator("runs/demo", "afr_Latn", node="level1.Germanic")`; `resolve_model` is the one
place that turns a language or node into a model folder and the prompt's language (and, for a language
without a model, names the node that fits: `hql_ray.outputs.family`).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from hql_ray.outputs import family, hub_layout, layout, model_card
from hql_ray.settings.exports import exporter_named
from hql_ray.data.amr import AMRSyntaxError, linearize, parse_tree, read_text_lines
from hql_ray.data.dataset import make_pair
from hql_ray.settings.errors import InputError
from hql_ray.scoring.evaluation import GenerationResult
from hql_ray.outputs.manifest import Manifest, read_manifest, run_tree
from hql_ray.settings.records import ExportInfo
from hql_ray.settings.tree import Language, LanguageTree


@dataclass
class TextInput:
    """One input (a graph, possibly spanning lines, or a sentence) and the 1-based line it starts on."""

    text: str
    line: int


# ---- reading inputs -----------------------------------------------------------------------------
def _depth_after(line: str, depth: int) -> int:
    """Parenthesis depth after `line`, ignoring parentheses inside double-quoted constants."""
    quoted, escaped = False, False
    for ch in line:
        if escaped:
            escaped = False
        elif ch == "\\" and quoted:
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif not quoted and ch == "(":
            depth += 1
        elif not quoted and ch == ")":
            depth -= 1
            if depth < 0:
                return depth
    return depth


def split_graphs(lines: Sequence[str], path: str | Path | None = None) -> list[TextInput]:
    """Graphs of a text: one per line, or multi-line PENMAN blocks (with `#` comment/metadata lines).

    A graph starts at a line beginning with `(` and ends where its parentheses close. Errors name the
    line: text that is not a graph, a graph still open at a blank line, at an unindented `(` or at
    the end of the input, an extra `)`.
    """
    out: list[TextInput] = []
    current: list[str] = []
    start, depth = 0, 0
    for i, raw in enumerate(lines, start=1):
        stripped = raw.strip()
        if depth == 0:
            if not stripped or stripped.startswith("#"):
                continue
            if not stripped.startswith("("):
                what = "an extra ')'" if stripped.startswith(")") else repr(stripped[:40])
                raise InputError(f"expected an AMR graph starting with '(', found {what}", path=path, line=i)
            start, current = i, []
        else:
            if not stripped:
                raise InputError("graph not closed before a blank line: a ')' is missing", path=path, line=start)
            if stripped.startswith("#"):
                continue
            if raw.startswith("("):
                raise InputError(f"graph not closed: a ')' is missing (a new graph starts on line {i})",
                                 path=path, line=start)
        current.append(raw)
        depth = _depth_after(raw, depth)
        if depth < 0:
            raise InputError("unbalanced parentheses: an extra ')'", path=path, line=i)
        if depth == 0:
            out.append(TextInput("\n".join(current), start))
    if depth > 0:
        raise InputError("graph not closed at the end of the input: a ')' is missing", path=path, line=start)
    return out


def split_sentences(lines: Sequence[str]) -> list[TextInput]:
    """text2amr inputs: every non-blank line is one sentence."""
    return [TextInput(line.strip(), i) for i, line in enumerate(lines, start=1) if line.strip()]


def read_inputs(source: str | Path | None, direction: str) -> tuple[list[TextInput], str]:
    """(inputs, name for messages) from a file, or stdin when `source` is None or '-'."""
    if source is None or str(source) == "-":
        name = "<stdin>"
        if sys.stdin.isatty():
            what = "AMR graphs" if direction == "amr2text" else "sentences"
            print(f"reading {what} from the terminal; end with Ctrl-D", file=sys.stderr)
        lines = sys.stdin.read().splitlines()
    else:
        name = str(source)
        lines = read_text_lines(source)
    inputs = split_graphs(lines, name) if direction == "amr2text" else split_sentences(lines)
    return inputs, name


# ---- the model ----------------------------------------------------------------------------------
def find_language(languages: list[Language], lang: str) -> Language | None:
    """A language of the run by FLORES code or display name (case-insensitive); None if none."""
    for language in languages:
        if lang in (language.code, language.name) or lang.lower() in (language.code.lower(), language.name.lower()):
            return language
    return None


def resolve_language(languages: list[Language], lang: str, run_dir: Path) -> Language:
    """A language of the run by FLORES code or display name (case-insensitive)."""
    found = find_language(languages, lang)
    if found is None:
        listed = ", ".join(f"{x.code} ({x.name})" for x in languages)
        raise InputError(f"unknown language {lang!r}; this run's languages: {listed}", path=run_dir)
    return found


@dataclass
class ModelChoice:
    """What `generate` (and serving) loads for a language or a node: the export folder, the language its
    prompt names, the node whose model it is, and what the export holds (None: a run older than that record)."""

    model_dir: Path
    language: Language
    node: str
    export: ExportInfo | None
    family: bool = False  # an inner node's own model (final/nodes/<id>/), used for a language without its own


def resolve_model(manifest: Manifest, tree: LanguageTree, lang: str | None, node: str | None = None) -> ModelChoice:
    """The one place that turns `--lang` (a code or name) and `--node` (a node id or value) into a model folder
    and the prompt's language. A language without a model of its own is refused with the node that fits
    (`family.fitting_node`) and the command that uses it."""
    run_dir = manifest.path.parent
    if node is not None:
        return _node_model(manifest, tree, run_dir, lang, node)
    if lang is None:
        raise InputError("name a language (--lang CODE) or a node (--node ID)", path=run_dir)
    language = find_language(tree.languages, lang)
    model_dir = layout.language_dir(language.code, run_dir) if language else None
    if language is not None and model_dir.is_dir():
        leaf = manifest.nodes.get(tree.leaf_for(language.code).id)
        return ModelChoice(model_dir, language, tree.leaf_for(language.code).id,
                           leaf.exports.get(language.code) if leaf is not None else None)
    if language is None:
        listed = ", ".join(f"{x.code} ({x.name})" for x in tree.languages)
        problem = f"unknown language {lang!r}; this run's languages: {listed}"
    else:
        leaf = tree.leaf_for(language.code)
        status = manifest.nodes[leaf.id].status if leaf.id in manifest.nodes else None
        problem = f"no exported model for {language.code}: its leaf node {leaf.id} is {status}"
    fit = family.fitting_node(manifest, tree, language.code if language else lang)
    raise InputError(problem + _fit_hint(manifest, run_dir, lang, fit), path=model_dir or run_dir)


def _fit_hint(manifest: Manifest, run_dir: Path, lang: str, fit: family.Fit) -> str:
    if fit.node is None:
        return f"; no node's model fits it either ({fit.reason})"
    hint = (f"; the model of node {fit.node} fits it ({fit.reason}): hql-ray generate {run_dir} --node {fit.node} "
            f"--lang {lang}")
    if not layout.node_dir(fit.node, run_dir).is_dir():
        hint += (" (the run did not export its inner nodes: run its training command again with export.nodes=all "
                 "--resume; it exports the finished nodes without training them)")
    return hint


def _node_model(manifest: Manifest, tree: LanguageTree, run_dir: Path, lang: str | None, node: str) -> ModelChoice:
    """--node: an inner node's own model, its prompt naming `lang` (any language); a leaf's language model."""
    try:
        (node_id,) = tree.skip_nodes([node], flag="--node")
    except ValueError:
        raise InputError(f"--node {node!r} names several nodes ({', '.join(sorted(tree.skip_nodes([node])))}): "
                         "give the node id", path=run_dir) from None
    entry = manifest.nodes[node_id]
    if tree.nodes[node_id].is_leaf:
        codes = tree.nodes[node_id].codes
        if lang is None and len(codes) > 1:
            raise InputError(f"node {node_id} is the leaf of {', '.join(codes)}: name one with --lang", path=run_dir)
        return resolve_model(manifest, tree, lang or codes[0])
    if lang is None:
        raise InputError(f"node {node_id} is a family's model (trained on {', '.join(entry.seen_languages)}): "
                         "name the language its prompt asks for with --lang (a code or a name; any language)",
                         path=run_dir)
    model_dir = layout.node_dir(node_id, run_dir)
    if not model_dir.is_dir():
        raise InputError(f"no exported model for node {node_id} (it is {entry.status}): inner nodes are exported "
                         "with export.nodes=all; run the training command again with export.nodes=all --resume "
                         "(the finished nodes are exported without training)", path=model_dir)
    language = find_language(tree.languages, lang) or family.foreign_language(lang) or Language(lang, lang)
    return ModelChoice(model_dir, language, node_id, entry.node_export, family=True)


def model_folder(ref: str | Path) -> Path:
    """What `generate` (and `serve`) load from: a run folder, a local folder laid out as `hql-ray push` writes it,
    or a Hub id (`hf://owner/name`, or `owner/name` where no such local path exists), downloaded into the
    Hugging Face cache (HF_HUB_OFFLINE=1: the cache only)."""
    repo = hub_layout.hub_id(str(ref))
    if repo is None:
        return Path(ref)
    try:
        return hub_layout.download(repo)
    except InputError as err:
        if str(ref).startswith(hub_layout.HF_SCHEME):
            raise
        raise InputError(f"no folder {ref} here, and as a Hub id: {err}") from None


class Generator:
    """A loaded leaf model with the run's input preparation; reuse it for many calls. `run_dir`: a run folder, or a
    pushed model (a Hub id or a folder in push's layout: `model_folder`)."""

    def __init__(self, run_dir: str | Path, lang: str | None, device: str | None = None, node: str | None = None):
        import torch

        folder = model_folder(run_dir)
        if hub_layout.is_pushed(folder) and not (folder / "manifest.json").is_file():
            self._open_pushed(folder, lang)
        else:
            self._open_run(folder, lang, node)
        self.direction = self.cfg.data.direction
        self.options = self.cfg.data.linearize
        self.max_source_length = self.cfg.data.max_source_length
        # The prompt the model card states (runs from before model cards: the one training used, rebuilt); a
        # node's card leaves the language to name.
        prompt = model_card.card_fields(self.model_dir).get("prompt")
        self.prompt = prompt.replace("{language}", self.language.name) if prompt else None
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self._model = None
        self._tokenizer = None

    def _open_run(self, run_dir: Path, lang: str | None, node: str | None) -> None:
        manifest = read_manifest(run_dir)
        self.run_dir = manifest.path.parent
        tree, self.tree_note = run_tree(manifest)
        self.choice = resolve_model(manifest, tree, lang, node)
        self.language, self.model_dir = self.choice.language, self.choice.model_dir
        self.cfg = manifest.config
        self.exporter = exporter_named(self.choice.export.mode) if self.choice.export is not None else None

    def _open_pushed(self, folder: Path, lang: str) -> None:
        """A pushed model: the language, config and export mode its card and config file state."""
        models = {m.code: m for m in hub_layout.pushed_languages(folder)}
        self.run_dir, self.tree_note, self.choice = folder, None, None
        self.language = resolve_language([Language(m.code, m.name) for m in models.values()], lang, folder)
        pushed = models[self.language.code]
        self.cfg, self.model_dir = pushed.cfg, pushed.model_dir
        self.exporter = exporter_named((pushed.fields.get("export") or {}).get("mode"))

    # The model loads on first use, so bad input is reported before seconds (or minutes) of loading.
    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from hql_ray.training import modeling

            own = self.whole_model and self.cfg.model.base != "tiny"  # a whole model's folder has its tokenizer
            self._tokenizer = modeling.load_tokenizer(str(self.model_dir) if own else self.cfg.model.base)
        return self._tokenizer

    @property
    def whole_model(self) -> bool:
        """final/<code>/ is a whole model (fft, or export mode merged), not a PEFT adapter over the base: as its
        export mode says (`hql_ray.settings.exports`), or for a run older than that record, as its files say."""
        if self.exporter is not None:
            return self.exporter.whole_model
        return self.cfg.model.mode == "fft" or (
            (self.model_dir / "config.json").is_file() and not (self.model_dir / "adapter_config.json").is_file())

    @property
    def model(self):
        if self._model is None:
            self._model = self._load()
        return self._model

    def _load(self):
        from hql_ray.training import modeling

        cfg = self.cfg
        if self.whole_model:
            import torch
            from transformers import AutoModelForSeq2SeqLM

            # a merged export is stored in bf16: computed in fp32 on a CPU, as the adapters are
            dtype = torch.float32 if self.device.type == "cpu" else "auto"
            return AutoModelForSeq2SeqLM.from_pretrained(str(self.model_dir), dtype=dtype).to(self.device).eval()
        from peft import PeftModel

        model = modeling.load_base_model(modeling.base_model_path(cfg), cfg.model.mode, self.device,
                                         double_quant=cfg.model.double_quant,
                                         quant_type=cfg.model.quant_type)
        return PeftModel.from_pretrained(model, str(self.model_dir)).eval()

    # ---- inputs -> prompts ---------------------------------------------------------------------
    def source(self, text: str, path: str | Path | None = None, line: int | None = None) -> str:
        """The model input for one graph (or sentence), as training built it."""
        if self.direction == "text2amr":
            if not text.strip():
                raise InputError("empty sentence", path=path, line=line)
            text = " ".join(text.split())
            return self.prompt.replace("{text}", text) if self.prompt else make_pair("text2amr", self.language.name, "", text)[0]
        if not text.strip():
            raise InputError("empty AMR", path=path, line=line)
        try:
            tree = parse_tree(text, first_line=line or 1)
        except AMRSyntaxError as err:
            raise InputError(f"malformed AMR: {err}", path=path, line=line) from None
        graph = linearize(tree, self.options)
        return self.prompt.replace("{amr}", graph) if self.prompt else make_pair("amr2text", self.language.name, graph, "")[0]

    def run(self, texts: Sequence[str], *, batch_size: int | None = None, max_new_tokens: int | None = None,
            path: str | Path | None = None, lines: Sequence[int] | None = None,
            on_batch: Callable[[int, int], None] | None = None) -> GenerationResult:
        """Generate for every input (in order); `clipped[i]` says input i was cut to the max source length."""
        from hql_ray.scoring.evaluation import generate

        lines = list(lines) if lines is not None else list(range(1, len(texts) + 1))
        where = path if path is not None else "<graphs>"
        sources = [self.source(t, where, n) for t, n in zip(texts, lines)]
        result = generate(self.model, self.tokenizer, sources,
                          batch_size=batch_size or self.cfg.eval.batch_size,
                          max_new_tokens=max_new_tokens or self.cfg.eval.max_new_tokens,
                          max_source_length=self.max_source_length, device=self.device, on_batch=on_batch)
        result.outputs = [" ".join(o.split()) for o in result.outputs]  # one line each, always
        return result

    def token_count(self, text: str) -> int:
        """Tokens of one input's model source (for the clipping warning)."""
        return len(self.tokenizer(self.source(text), add_special_tokens=True)["input_ids"])

    def __call__(self, texts: Sequence[str], **kw) -> list[str]:
        return self.run(texts, **kw).outputs


def load_generator(run_dir: str | Path, lang: str | None, device: str | None = None,
                   node: str | None = None) -> Generator:
    return Generator(run_dir, lang, device=device, node=node)


def generate_sentences(run_dir: str | Path, lang: str | None, graphs: list[str], *, generator: Generator | None = None,
                       batch_size: int | None = None, max_new_tokens: int | None = None,
                       device: str | None = None, node: str | None = None) -> list[str]:
    """One output per input graph (a text2amr run: one AMR per input sentence). Each graph may span lines."""
    gen = generator or load_generator(run_dir, lang, device=device, node=node)
    return gen(list(graphs), batch_size=batch_size, max_new_tokens=max_new_tokens)
