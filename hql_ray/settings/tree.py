"""The language tree: which languages train together, and in what order (the HQL curriculum).

A tree file is a CSV with one row per language: ``code`` (FLORES code), any number of level
columns, and ``language`` (the display name used in prompts and as the leaf). The user picks
which level columns form the curriculum (the original's ``-ln``), in order from root to leaves.
Every bad file is reported as an ``InputError`` naming the file and line, before anything trains.

The original's per-language files (``language_files/deu.csv`` upstream) hold only ``code,language``
and list all 12 languages: with ``-ln language`` every row is a leaf trained alone (12 monolingual
models). They load as they are, and so do our one-row files with level columns.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from hql_ray.settings.errors import ConfigError, InputError

CODE = "code"
LANGUAGE = "language"
_UNSAFE = re.compile(r"[^\w.-]")
_CODE_OK = re.compile(r"^[\w-]+$")


@dataclass(frozen=True)
class Language:
    code: str
    name: str


@dataclass
class TreeNode:
    """One training stage: trains on the union of the data of ``languages``."""

    id: str
    name: str
    level: str
    depth: int
    parent: str | None
    children: list[str] = field(default_factory=list)
    languages: list[Language] = field(default_factory=list)

    @property
    def codes(self) -> list[str]:
        return [lang.code for lang in self.languages]

    @property
    def is_leaf(self) -> bool:
        return not self.children


def node_id(level: str, value: str) -> str:
    """Stable, filename-safe id (used for run folders and Ray job names)."""
    return _UNSAFE.sub("_", f"{level}.{value}")


def parse_level_args(values: Iterable[str] | str) -> list[str]:
    """Level names from ``-ln`` as users type them.

    The original README writes ``-ln "level0", "level1", "language"``, which reaches us as
    ``['level0,', 'level1,', 'language']``; ``level0,level1`` and ``level0 level1`` work too.
    """
    if isinstance(values, str):
        values = [values]
    levels: list[str] = []
    for value in values:
        for piece in str(value).replace(",", " ").split():
            piece = piece.strip().strip("\"'").strip()
            if piece:
                levels.append(piece)
    return levels


@dataclass
class _Table:
    header: list[str]
    rows: list[tuple[int, dict[str, str]]]  # (1-based line, cells by column)


def _read_table(path: Path) -> _Table:
    """Read the CSV with line numbers; checks that do not depend on the chosen levels."""
    if not path.exists():
        raise InputError("tree file not found", path=path)
    if path.is_dir():
        raise InputError("is a directory, expected a tree CSV file", path=path)
    header: list[str] | None = None
    rows: list[tuple[int, dict[str, str]]] = []
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            reader = csv.reader(handle, strict=True)
            last = 0
            try:
                for cells in reader:
                    line, last = last + 1, reader.line_num
                    cells = [cell.strip() for cell in cells]
                    if not any(cells):
                        continue  # blank line
                    if header is None:
                        header = _check_header(cells, path)
                        continue
                    if len(cells) != len(header):
                        raise InputError(
                            f"{len(cells)} cells, expected {len(header)} ({','.join(header)})",
                            path=path, line=line)
                    rows.append((line, dict(zip(header, cells))))
            except csv.Error as err:
                raise InputError(f"not a valid CSV file: {err}", path=path, line=reader.line_num)
    except UnicodeDecodeError as err:
        raise InputError(f"not UTF-8 text ({err.reason} at byte {err.start})", path=path)
    if header is None:
        raise InputError("empty file: expected a header like code,level0,level1,language", path=path)
    if not rows:
        raise InputError("no languages: the file has a header but no rows", path=path, line=1)
    _check_rows(rows, path)
    return _Table(header, rows)


def _check_header(cells: list[str], path: Path) -> list[str]:
    for index, name in enumerate(cells, 1):
        if not name:
            raise InputError(f"column {index} of the header has no name", path=path, line=1)
    seen: set[str] = set()
    for name in cells:
        if name in seen:
            raise InputError(f"column {name!r} appears twice in the header", path=path, line=1)
        seen.add(name)
    for required in (CODE, LANGUAGE):
        if required not in cells:
            raise InputError(
                f"missing column {required!r} (header: {','.join(cells)}); a tree file needs "
                f"'code', one column per level and 'language'", path=path, line=1)
    return cells


def _check_rows(rows: list[tuple[int, dict[str, str]]], path: Path) -> None:
    """Codes and display names identify a language everywhere (data folders, prompts)."""
    codes: dict[str, int] = {}
    names: dict[str, tuple[str, int]] = {}
    for line, row in rows:
        code, name = row[CODE], row[LANGUAGE]
        if not code:
            raise InputError("empty 'code' cell", path=path, line=line)
        if not _CODE_OK.match(code):
            raise InputError(
                f"code {code!r} is not a language code (expected a FLORES code like deu_Latn)",
                path=path, line=line)
        if code in codes:
            raise InputError(f"duplicate code {code!r} (first on line {codes[code]})",
                             path=path, line=line)
        codes[code] = line
        if not name:
            raise InputError(f"empty 'language' cell for {code}", path=path, line=line)
        if name in names:
            other, first = names[name]
            raise InputError(
                f"language name {name!r} of {code} is already used by {other} on line {first}",
                path=path, line=line)
        names[name] = (code, line)


def level_columns(path: str | Path) -> list[str]:
    """The level columns a file offers (every column but ``code``), in file order."""
    return [name for name in _read_table(Path(path)).header if name != CODE]


def _default_levels(header: list[str]) -> list[str]:
    levels = [name for name in header if name not in (CODE, LANGUAGE)]
    return levels + [LANGUAGE]


def _check_levels(levels: list[str], header: list[str], path: Path) -> None:
    available = [name for name in header if name != CODE]
    if not levels:
        raise InputError(f"no level chosen (available: {', '.join(available)})", path=path, line=1)
    for level in levels:
        if level not in available:
            raise InputError(
                f"unknown level {level!r} (available: {', '.join(available)})", path=path, line=1)
        if levels.count(level) > 1:
            raise InputError(f"level {level!r} is chosen twice", path=path, line=1)
    if LANGUAGE in levels and levels[-1] != LANGUAGE:
        raise InputError(
            f"level 'language' must come last (it names the leaves); got {' '.join(levels)}",
            path=path, line=1)


class LanguageTree:
    """Nodes of the chosen levels; parents come before children in ``nodes``."""

    def __init__(self, path: str, levels: list[str], languages: list[Language],
                 nodes: dict[str, TreeNode]):
        self.path = path
        self.levels = levels
        self.languages = languages
        self.nodes = nodes
        self.roots = [node.id for node in nodes.values() if node.parent is None]

    def __repr__(self) -> str:
        return f"LanguageTree({self.path!r}, {self.summary()})"

    def node(self, node_id: str) -> TreeNode:
        try:
            return self.nodes[node_id]
        except KeyError:
            raise InputError(f"no node {node_id!r} in the tree (nodes: {', '.join(self.nodes)})",
                             path=self.path) from None

    def leaves(self) -> list[TreeNode]:
        return [node for node in self.nodes.values() if node.is_leaf]

    def leaf_for(self, code: str) -> TreeNode:
        """The deepest node holding ``code``: where that language's final model comes from."""
        best: TreeNode | None = None
        for node in self.nodes.values():
            if code in node.codes and (best is None or node.depth > best.depth):
                best = node
        if best is None:
            codes = ", ".join(lang.code for lang in self.languages)
            raise InputError(f"language {code!r} is not in the tree (codes: {codes})",
                             path=self.path)
        return best

    def children_of(self, node_id: str) -> list[TreeNode]:
        return [self.nodes[child] for child in self.node(node_id).children]

    def ancestors(self, node_id: str) -> list[TreeNode]:
        """Root first, without the node itself: whose adapters a node starts from."""
        chain: list[TreeNode] = []
        parent = self.node(node_id).parent
        while parent is not None:
            chain.append(self.nodes[parent])
            parent = self.nodes[parent].parent
        return chain[::-1]

    def descendants(self, node_id: str) -> list[TreeNode]:
        """Every node below ``node_id``, nearest first."""
        out: list[TreeNode] = []
        todo = list(self.node(node_id).children)
        while todo:
            node = self.nodes[todo.pop(0)]
            out.append(node)
            todo += node.children
        return out

    def nodes_at_depth(self, depth: int) -> list[TreeNode]:
        return [node for node in self.nodes.values() if node.depth == depth]

    def skip_nodes(self, values: Iterable[str], flag: str = "tree.skip (-sv)") -> set[str]:
        """Ids of the nodes named by ``tree.skip`` (the original's ``-sv``): a node's value (e.g.
        ``Germanic``, or ``German`` at the language level), its id (``level1.Germanic``), or the code
        of a language-level node (``deu_Latn``). An unknown value is a ConfigError listing the valid ones."""
        out: set[str] = set()
        for value in values:
            found = {n.id for n in self.nodes.values()
                     if value in (n.name, n.id) or (n.level == LANGUAGE and [value] == n.codes)}
            if not found:
                valid = ", ".join(dict.fromkeys(n.name for n in self.nodes.values()))
                raise ConfigError(f"{flag}: no node {value!r} in {self.path} "
                                  f"(levels {' '.join(self.levels)}); valid values: {valid}")
            out |= found
        return out

    def needed_skips(self, skipped: set[str]) -> list[str]:
        """Skipped nodes that a node of this run starts from (a descendant is not skipped): their
        adapters must already be in the run folder."""
        def trains_below(node_id: str) -> bool:
            return any(c not in skipped or trains_below(c) for c in self.nodes[node_id].children)
        return [n for n in self.nodes if n in skipped and trains_below(n)]

    def language_name(self, code: str) -> str:
        for lang in self.languages:
            if lang.code == code:
                return lang.name
        raise InputError(f"language {code!r} is not in the tree", path=self.path)

    def summary(self) -> str:
        def plural(n: int, word: str) -> str:
            return f"{n} {word}{'' if n == 1 else 's'}"
        return (f"{plural(len(self.nodes), 'node')}, {plural(len(self.levels), 'level')}, "
                f"{plural(len(self.languages), 'language')}")

    def to_dict(self) -> dict:
        """Plain data (str/int/list/dict) so the tree crosses Ray boundaries and JSON files."""
        return {
            "path": self.path,
            "levels": list(self.levels),
            "languages": [[lang.code, lang.name] for lang in self.languages],
            "nodes": [
                {"id": n.id, "name": n.name, "level": n.level, "depth": n.depth,
                 "parent": n.parent, "children": list(n.children),
                 "languages": [lang.code for lang in n.languages]}
                for n in self.nodes.values()
            ],
        }

    @classmethod
    def from_dict(cls, data: dict) -> LanguageTree:
        languages = [Language(code, name) for code, name in data["languages"]]
        by_code = {lang.code: lang for lang in languages}
        nodes = {
            n["id"]: TreeNode(id=n["id"], name=n["name"], level=n["level"], depth=n["depth"],
                              parent=n["parent"], children=list(n["children"]),
                              languages=[by_code[code] for code in n["languages"]])
            for n in data["nodes"]
        }
        return cls(data["path"], list(data["levels"]), languages, nodes)

    def render(self, counts: dict[str, int] | None = None) -> str:
        """Box-drawing tree, one node per line with its languages.

        ``counts`` maps language codes (summed over a node's languages) or node ids (shown
        as is) to a number, e.g. training examples.
        """
        lines: list[str] = []

        def label(node: TreeNode) -> str:
            langs = ", ".join(f"{lang.code} {lang.name}" for lang in node.languages)
            text = f"{node.id}  [{langs}]"
            if counts is not None:
                if node.id in counts:
                    total: int | None = counts[node.id]
                else:
                    known = [counts[c] for c in node.codes if c in counts]
                    total = sum(known) if known else None
                if total is not None:
                    text += f"  ({total:,} examples)"
            return text

        def walk(node_id: str, prefix: str, last: bool, top: bool) -> None:
            node = self.nodes[node_id]
            branch = "" if top else ("└── " if last else "├── ")
            lines.append(prefix + branch + label(node))
            inner = prefix if top else prefix + ("    " if last else "│   ")
            for i, child in enumerate(node.children):
                walk(child, inner, i == len(node.children) - 1, False)

        for root in self.roots:
            walk(root, "", True, True)
        return "\n".join(lines)


def load_tree(path: str | Path, levels: Iterable[str] | str | None = None) -> LanguageTree:
    """Build the tree of ``levels`` (root first; default: all level columns, ``language`` last).

    Raises ``InputError`` naming the file and line for anything that would make the
    curriculum ambiguous: unknown levels, empty cells, a group under two parents, ...
    """
    path = Path(path)
    return _build_tree(_read_table(path), levels, path)


@dataclass(frozen=True)
class TreeRow:
    """One language of a tree file: its code, display name and its group at each level column."""

    code: str
    name: str
    groups: tuple[str, ...]


def tree_from_rows(levels: list[str], rows: list[TreeRow], source: str | Path,
                   chosen: Iterable[str] | str | None = None) -> LanguageTree:
    """The tree that ``write_tree_csv(levels, rows)`` would load as: the same checks, line numbers
    counted as in that file (header on line 1). For trees made in memory (Newick, suggestions)."""
    header = _check_header([CODE, *levels, LANGUAGE], Path(source))
    table_rows = [(line, {CODE: row.code, **dict(zip(levels, row.groups)), LANGUAGE: row.name})
                  for line, row in enumerate(rows, 2)]
    _check_rows(table_rows, Path(source))
    return _build_tree(_Table(header, table_rows), chosen, Path(source))


def tree_csv(levels: list[str], rows: list[TreeRow]) -> str:
    """A tree file's text: ``code``, the level columns, ``language``; one row per language."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([CODE, *levels, LANGUAGE])
    writer.writerows([row.code, *row.groups, row.name] for row in rows)
    return out.getvalue()


def tree_rows(tree: LanguageTree) -> tuple[list[str], list[TreeRow]]:
    """The level columns and rows of a loaded tree (its chosen levels; ``language`` is the name column)."""
    levels = [level for level in tree.levels if level != LANGUAGE]
    rows = []
    for lang in tree.languages:
        chain = [*tree.ancestors(tree.leaf_for(lang.code).id), tree.leaf_for(lang.code)]
        rows.append(TreeRow(lang.code, lang.name, tuple(n.name for n in chain if n.level != LANGUAGE)))
    return levels, rows


def _build_tree(table: _Table, levels: Iterable[str] | str | None, path: Path) -> LanguageTree:
    chosen = _default_levels(table.header) if levels is None else parse_level_args(levels)
    _check_levels(chosen, table.header, path)

    languages = [Language(row[CODE], row[LANGUAGE]) for _, row in table.rows]
    nodes: dict[str, TreeNode] = {}
    first_line: dict[str, int] = {}      # node id -> line that created it
    keys: dict[str, tuple[str, str]] = {}  # node id -> (level, value), to catch id clashes
    for (line, row), lang in zip(table.rows, languages):
        parent: TreeNode | None = None
        for depth, level in enumerate(chosen):
            value = row[level]
            if not value:
                raise InputError(f"empty cell in level {level!r} for {lang.code}",
                                 path=path, line=line)
            nid = node_id(level, value)
            node = nodes.get(nid)
            if node is None:
                node = TreeNode(nid, value, level, depth, parent.id if parent else None)
                nodes[nid] = node
                first_line[nid], keys[nid] = line, (level, value)
                if parent is not None:
                    parent.children.append(nid)
            elif keys[nid] != (level, value):
                raise InputError(
                    f"{level} {value!r} and {keys[nid][1]!r} (line {first_line[nid]}) both "
                    f"become node id {nid!r}; rename one", path=path, line=line)
            elif node.parent != (parent.id if parent else None):
                above = chosen[depth - 1]
                raise InputError(
                    f"{level} {value!r} is under {above} {parent.name!r} here but under "
                    f"{above} {nodes[node.parent].name!r} on line {first_line[nid]}; "
                    f"a group must have one parent", path=path, line=line)
            node.languages.append(lang)
            parent = node

    ordered = sorted(nodes.values(), key=lambda n: n.depth)  # stable: file order within a depth
    return LanguageTree(str(path), chosen, languages, {n.id: n for n in ordered})
