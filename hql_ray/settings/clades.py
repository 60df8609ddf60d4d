"""Nested trees (a Newick file, a family tree) and the level rows of our tree files.

A tree file gives every language one group per level column, so every language sits at the same depth.
A nested tree does not: ``to_rows`` cuts it at a depth limit and gives a language whose branch is
shorter than the others a group of its own at the missing levels (named after the language: one more
stage on its own data, as a leaf of a flat tree would have). Unnamed groups get ``level<k>_<i>`` names,
as the paper's DLHQL tree names its groups.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hql_ray.settings.errors import InputError
from hql_ray.settings.tree import LANGUAGE, LanguageTree, TreeRow


@dataclass
class Clade:
    """A group (``children``) or a language (``code`` set, ``name`` its display name)."""

    name: str = ""
    children: list[Clade] = field(default_factory=list)
    code: str | None = None
    where: tuple[int, int] | None = None  # (line, column) in a Newick file, for errors

    @property
    def is_language(self) -> bool:
        return self.code is not None

    def error(self, problem: str, source: str = "") -> InputError:
        """An InputError at this clade's place in its file (file:line: column N: problem)."""
        if self.where is None:
            return InputError(problem, path=source or None)
        return InputError(f"column {self.where[1]}: {problem}", path=source or None, line=self.where[0])

    def languages(self) -> list[Clade]:
        if self.is_language:
            return [self]
        return [leaf for child in self.children for leaf in child.languages()]


def level_names(count: int) -> list[str]:
    """The level columns of a tree made here: level0 (the root), level1, ... as in the paper's files."""
    return [f"level{k}" for k in range(count)]


def to_rows(root: Clade, depth: int | None = None, source: str = "") -> tuple[list[str], list[TreeRow]]:
    """Level columns and one row per language (in tree order) for a nested tree, at most ``depth``
    group levels (deeper groups are dropped: their languages go straight under the last kept one)."""
    chains: list[tuple[Clade, list[Clade]]] = []

    def walk(clade: Clade, above: list[Clade]) -> None:
        if clade.is_language:
            chains.append((clade, above))
            return
        if not clade.children:
            raise clade.error(f"group {clade.name or '(unnamed)'} has no languages", source)
        for child in clade.children:
            walk(child, above + [clade])

    walk(root, [])
    count = max(len(above) for _, above in chains)
    count = count if depth is None else min(count, depth)
    namer = _GroupNames(source)
    rows = []
    for leaf, above in chains:
        groups = [namer.name(clade, k) for k, clade in enumerate(above[:count])]
        groups += [namer.name(Clade(leaf.name, where=leaf.where), k) for k in range(len(groups), count)]
        rows.append(TreeRow(leaf.code, leaf.name, tuple(groups)))
    return level_names(count), rows


class _GroupNames:
    """One name per group and level: unnamed groups numbered per level, two groups of one name refused."""

    def __init__(self, source: str):
        self.source = source
        self.by_clade: dict[int, str] = {}
        self.used: dict[tuple[int, str], Clade] = {}
        self.unnamed: dict[int, int] = {}

    def name(self, clade: Clade, level: int) -> str:
        if id(clade) in self.by_clade:
            return self.by_clade[id(clade)]
        name = clade.name
        if not name:
            while not name or (level, name) in self.used:
                name = f"level{level}_{self.unnamed.get(level, 0)}"
                self.unnamed[level] = self.unnamed.get(level, 0) + 1
        other = self.used.get((level, name))
        if other is not None:
            first = f" (the first at line {other.where[0]}, column {other.where[1]})" if other.where else ""
            raise clade.error(f"two groups at level {level} are both named {name!r}{first}; rename one",
                              self.source)
        self.used[(level, name)] = clade
        self.by_clade[id(clade)] = name
        return name


def from_tree(tree: LanguageTree) -> Clade:
    """The nested form of a loaded tree (several roots go under one unnamed root)."""
    by_code = {lang.code: lang for lang in tree.languages}

    def clade(node_id: str) -> Clade:
        node = tree.nodes[node_id]
        if node.level == LANGUAGE:
            return Clade(node.languages[0].name, code=node.languages[0].code)
        if node.is_leaf:
            return Clade(node.name, [Clade(by_code[c].name, code=c) for c in node.codes])
        return Clade(node.name, [clade(child) for child in node.children])

    roots = [clade(root) for root in tree.roots]
    return roots[0] if len(roots) == 1 else Clade("", roots)
