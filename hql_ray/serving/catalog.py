"""The languages a server offers (`Catalog`): for each, `hql-ray generate`'s own `Generator` (the run's config,
the prompt from the language's model card, the linearization), read once; no model is loaded here.

What is served is what `generate` loads (`model_folder`): a run folder, or a model `hql-ray push` laid out (a
local folder or a Hub id). The gateway uses the catalog to turn a request's graph into the model input exactly as
`generate` does; the model replicas use it to know where each language's export is and how to load the base."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hql_ray.outputs import hub_layout, layout
from hql_ray.outputs.generate import Generator, is_pushed_model, model_folder, resolve_language
from hql_ray.outputs.manifest import read_manifest, run_tree
from hql_ray.settings.errors import InputError
from hql_ray.settings.tree import Language

DIRECTIONS = {"amr2text": ("amr", "text"), "text2amr": ("text", "amr")}  # (the input's key, the output's key)


@dataclass
class LanguageInfo:
    """GET /languages: one served language."""

    code: str
    name: str
    prompt: str | None
    export: str  # "adapter" (over the shared base) or "model" (a whole model: merged or fft exports)

    def to_dict(self) -> dict:
        return {"code": self.code, "name": self.name, "prompt": self.prompt, "export": self.export}


@dataclass
class Offer:
    """What a run folder or a pushed model offers: the folder, every language it names (a run: its tree's), those
    with an export, and the note on the run's tree (None: a pushed model, or nothing to say)."""

    folder: Path
    languages: list[Language]
    exported: list[Language]
    tree_note: str | None = None


def offer_of(ref: str | Path) -> Offer:
    """The languages of a run folder (exported: under final/<code>/, in the tree's order), or of a pushed model."""
    folder = model_folder(ref)
    if is_pushed_model(folder):
        languages = [Language(m.code, m.name) for m in hub_layout.pushed_languages(folder)]
        return Offer(folder, languages, languages)
    manifest = read_manifest(folder)
    tree, note = run_tree(manifest)
    run_dir = manifest.path.parent
    return Offer(run_dir, tree.languages, [x for x in tree.languages if layout.language_dir(x.code, run_dir).is_dir()],
                 note)


def exported_languages(run_dir: str | Path) -> list[Language]:
    """The languages that have an export (a run's in its tree's order)."""
    return offer_of(run_dir).exported


def replica_reference(ref: str | Path) -> str:
    """What replicas (and a Serve config file) are told to load: a Hub id as written (each machine downloads it
    into its own cache), else the folder's absolute path."""
    return str(ref) if hub_layout.hub_id(str(ref)) else str(Path(ref).resolve())


class Catalog:
    """The served languages of one run; `requested`: codes or names (empty: every exported language)."""

    def __init__(self, run_dir: str | Path, requested: list[str] | tuple[str, ...] = (), device: str | None = None):
        offer = offer_of(run_dir)
        self.run_dir, self.tree_note = offer.folder, offer.tree_note
        if requested:
            codes = list(dict.fromkeys(resolve_language(offer.languages, lang, self.run_dir).code for lang in requested))
        else:
            codes = [lang.code for lang in offer.exported]
            if not codes:
                raise InputError("no language of this run has an export under final/ (is the run finished?)",
                                 path=self.run_dir)
        self.generators = {code: Generator(self.run_dir, code, device=device) for code in codes}
        kinds = {gen.whole_model for gen in self.generators.values()}
        if len(kinds) > 1:
            raise InputError("final/ mixes whole models and adapters; serve them as two applications (--languages)",
                             path=self.run_dir / layout.FINAL)
        first = next(iter(self.generators.values()))
        self.direction = first.direction
        self.whole_models = first.whole_model
        self.input_key, self.output_key = DIRECTIONS[self.direction]
        self.max_new_tokens = first.cfg.eval.max_new_tokens  # what `hql-ray generate` uses unless told

    @property
    def codes(self) -> list[str]:
        return list(self.generators)

    def resolve(self, lang: str) -> str:
        """A served language's code from its code or name (case-insensitive); InputError listing the served ones."""
        languages = [gen.language for gen in self.generators.values()]
        try:
            return resolve_language(languages, lang, self.run_dir).code
        except InputError:
            listed = ", ".join(f"{x.code} ({x.name})" for x in languages)
            raise InputError(f"unknown language {lang!r}; served languages: {listed}") from None

    def source(self, code: str, text: str) -> str:
        """The model input for one graph (or sentence), as training and `hql-ray generate` build it."""
        return self.generators[code].source(text)

    def describe(self) -> list[LanguageInfo]:
        return [LanguageInfo(code, gen.language.name, gen.prompt, "model" if gen.whole_model else "adapter")
                for code, gen in self.generators.items()]
