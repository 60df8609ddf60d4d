"""Which node of a finished run fits a language that has no model of its own there (`fitting_node`).

A language of the run's tree whose leaf did not train (interrupted, failed, skipped): the deepest finished
node above its leaf, the family it was trained in or would have been. A language outside the tree: its
closest relatives among the run's languages by Glottolog family (URIEL's, as `hql-ray tree suggest
--by genetic` reads them; no network), then the lowest node of the tree holding them all (a leaf's parent
rather than the leaf: a family's model, not another language's), then the deepest finished node at or above
it. `hql-ray generate --node` then uses that node's own model (export.nodes all: final/nodes/<node id>/).
"""

from __future__ import annotations

from dataclasses import dataclass

from hql_ray.outputs.manifest import Manifest
from hql_ray.settings import uriel
from hql_ray.settings.errors import InputError
from hql_ray.settings.tree import Language, LanguageTree


@dataclass(frozen=True)
class Fit:
    """The node whose model fits a language without its own, and why (None: none does)."""

    node: str | None
    reason: str


def _finished_at_or_above(manifest: Manifest, tree: LanguageTree, node_id: str, inner: bool) -> str | None:
    """The deepest done node from `node_id` up (only nodes with children when `inner`)."""
    chain = [a.id for a in tree.ancestors(node_id)] + [node_id]
    for candidate in reversed(chain):
        entry = manifest.nodes.get(candidate)
        if entry is not None and entry.status == "done" and (tree.nodes[candidate].children or not inner):
            return candidate
    return None


def _uriel(code: str) -> uriel.UrielLanguage | None:
    try:
        return uriel.resolve([code])[0]
    except InputError:
        return None


def foreign_language(code: str) -> Language | None:
    """A language code URIEL knows (FLORES deu_Latn, ISO 639-3 or 639-1) with its display name; else None."""
    found = _uriel(code)
    return Language(code, found.name) if found is not None else None


def fitting_node(manifest: Manifest, tree: LanguageTree, code: str) -> Fit:
    """The finished node whose model fits language `code` best (see the module's text)."""
    if code in {lang.code for lang in tree.languages}:
        leaf = tree.leaf_for(code).id
        parent = tree.nodes[leaf].parent
        found = _finished_at_or_above(manifest, tree, parent, inner=True) if parent else None
        if found is None:
            return Fit(None, f"no node above its leaf {leaf} is trained")
        return Fit(found, f"the deepest trained node above its leaf {leaf}, trained on "
                          f"{', '.join(manifest.nodes[found].seen_languages)}")
    return _by_family(manifest, tree, code)


def _by_family(manifest: Manifest, tree: LanguageTree, code: str) -> Fit:
    target = _uriel(code)
    if target is None:
        return Fit(None, f"{code!r} is not a language code URIEL knows, so its relatives are unknown")
    known = {lang.code: found for lang in tree.languages if (found := _uriel(lang.code)) is not None}
    paths = uriel.family_paths(sorted({target.iso, *(lang.iso for lang in known.values())}))
    shared = {c: [f for f in paths[target.iso] if f in paths[lang.iso]] for c, lang in known.items()}
    best = max((len(s) for s in shared.values()), default=0)
    if best == 0:
        roots = [r for r in tree.roots if manifest.nodes.get(r) and manifest.nodes[r].status == "done"]
        why = f"URIEL puts {target.name} in no family with this run's languages"
        return Fit(roots[0], f"{why}; the root {roots[0]} is the most general model") if len(roots) == 1 \
            else Fit(None, why)
    relatives = [c for c, s in shared.items() if len(s) == best]
    places = [[a.id for a in tree.ancestors(tree.leaf_for(c).id)] + [tree.leaf_for(c).id] for c in relatives]
    common = [p[0] for p in zip(*places) if len(set(p)) == 1]
    if not common:
        return Fit(None, f"its closest relatives here ({', '.join(relatives)}) share no node of the tree")
    lowest = common[-1]
    if tree.nodes[lowest].is_leaf and tree.nodes[lowest].parent:
        lowest = tree.nodes[lowest].parent  # a family's model, not one language's
    found = _finished_at_or_above(manifest, tree, lowest, inner=False)
    if found is None:
        return Fit(None, f"no node above {lowest} is trained")
    names = ", ".join(f"{tree.language_name(c)} ({c})" for c in relatives)
    return Fit(found, f"{target.name}'s closest relatives in this run by Glottolog family are {names} "
                      f"(the {shared[relatives[0]][-1]} family)")
