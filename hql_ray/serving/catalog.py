"""The languages a server offers (`Catalog`): for each, `hql-ray generate`'s own `Generator` (the run's config,
the prompt from the language's model card, the linearization), read once; no model is loaded here.

The gateway uses it to turn a request's graph into the model input exactly as `generate` does; the model
replicas use it to know where each language's export is and how to load the run's base."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hql_ray.outputs.generate import Generator, resolve_language
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


def exported_languages(run_dir: str | Path) -> list[Language]:
    """The run's languages that have an export under final/<code>/, in the tree's order."""
    manifest = read_manifest(run_dir)
    tree, _ = run_tree(manifest)
    final = manifest.path.parent / "final"
    return [lang for lang in tree.languages if (final / lang.code).is_dir()]


class Catalog:
    """The served languages of one run; `requested`: codes or names (empty: every exported language)."""

    def __init__(self, run_dir: str | Path, requested: list[str] | tuple[str, ...] = (), device: str | None = None):
        manifest = read_manifest(run_dir)
        self.run_dir = manifest.path.parent
        tree, self.tree_note = run_tree(manifest)
        if requested:
            codes = list(dict.fromkeys(resolve_language(tree.languages, lang, self.run_dir).code for lang in requested))
        else:
            codes = [lang.code for lang in exported_languages(self.run_dir)]
            if not codes:
                raise InputError("no language of this run has an export under final/ (is the run finished?)",
                                 path=self.run_dir)
        self.generators = {code: Generator(self.run_dir, code, device=device) for code in codes}
        kinds = {gen.whole_model for gen in self.generators.values()}
        if len(kinds) > 1:
            raise InputError("final/ mixes whole models and adapters; serve them as two applications (--languages)",
                             path=self.run_dir / "final")
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
