"""Newick, the tree format of phylogenetics tools and of Glottolog's exports, to and from our tree files.

A language is a leaf whose label carries its code in brackets, as Glottolog writes its leaves:
``'German [deu_Latn]'`` (quoted: Newick reads an unquoted ``[...]`` as a comment), or a bare code
(``deu_Latn``; the display name then comes from ``uriel.display_name``). Glottolog's
``'Standard German [stan1295][deu]-l-'`` reads as German... with code ``deu``: the last bracket that
holds a language code wins, glottocodes are skipped. Group labels are node names (``Germanic``; an
unnamed group gets ``level<k>_<i>``). Branch lengths and ``[comments]`` are read and dropped. Blanks in
names become underscores (``Haitian Creole`` -> ``Haitian_Creole``, the paper's spelling).

The newick package (1.11) reports no position for a syntax error, so this small reader does: every
error names the file, line and column.
"""

from __future__ import annotations

import re
from pathlib import Path

from hql_ray.settings.clades import Clade, from_tree, to_rows
from hql_ray.settings.errors import InputError
from hql_ray.settings.tree import LanguageTree, load_tree, tree_from_rows

SUFFIXES = (".nwk", ".newick", ".nw", ".tre", ".tree", ".nex")
_PLAIN = re.compile(r"^[^()\[\]':;,\s]+$")  # a label that needs no quotes
_STOP = set("()[]':;,")
_CODE = re.compile(r"^[a-z]{2,3}(_[A-Za-z]{4})?$")
_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


class _Reader:
    """Recursive descent over the text; ``at`` is the index of the next character."""

    def __init__(self, text: str, path: str):
        self.text, self.path, self.at = text, path, 0

    def where(self, index: int | None = None) -> tuple[int, int]:
        index = self.at if index is None else index
        line = self.text.count("\n", 0, index) + 1
        return line, index - (self.text.rfind("\n", 0, index) + 1) + 1

    def error(self, problem: str, index: int | None = None) -> InputError:
        line, column = self.where(index)
        return InputError(f"column {column}: {problem}", path=self.path, line=line)

    def found(self) -> str:
        return repr(self.text[self.at]) if self.at < len(self.text) else "the end of the file"

    def skip(self) -> None:
        """Blanks and [comments]."""
        while self.at < len(self.text):
            char = self.text[self.at]
            if char.isspace():
                self.at += 1
            elif char == "[":
                end = self.text.find("]", self.at)
                if end < 0:
                    raise self.error("comment '[' is never closed", self.at)
                self.at = end + 1
            else:
                return

    def tree(self) -> Clade:
        self.skip()
        if self.at >= len(self.text):
            raise self.error("empty file: expected a Newick tree like ((a,b)X,c)Root;")
        root = self.clade()
        self.skip()
        if self.at >= len(self.text) or self.text[self.at] != ";":
            raise self.error(f"expected ';' at the end of the tree, found {self.found()}")
        self.at += 1
        self.skip()
        if self.at < len(self.text):
            raise self.error("text after the tree's ';' (one tree per file)")
        return root

    def clade(self) -> Clade:
        self.skip()
        start = self.at
        if self.at < len(self.text) and self.text[self.at] == "(":
            self.at += 1
            children = [self.clade()]
            while True:
                self.skip()
                char = self.text[self.at] if self.at < len(self.text) else ""
                self.at += 1
                if char == ",":
                    children.append(self.clade())
                elif char == ")":
                    break
                else:
                    self.at -= 1
                    raise self.error(f"expected ',' or ')', found {self.found()} (the '(' is at "
                                     f"line {self.where(start)[0]}, column {self.where(start)[1]})")
            label, _ = self.label()
            self.length()
            return Clade(_group_name(label), children, where=self.where(start))
        label, label_at = self.label()
        if not label:
            raise self.error(f"expected a language or '(', found {self.found()}")
        self.length()
        return self.language(label, label_at)

    def label(self) -> tuple[str, int]:
        self.skip()
        start = self.at
        if self.at < len(self.text) and self.text[self.at] == "'":
            out, self.at = [], self.at + 1
            while True:
                end = self.text.find("'", self.at)
                if end < 0:
                    raise self.error("quote ' is never closed", start)
                out.append(self.text[self.at:end])
                self.at = end + 1
                if self.text.startswith("'", self.at):  # '' inside quotes is one quote
                    out.append("'")
                    self.at += 1
                else:
                    return "".join(out), start
        while self.at < len(self.text) and self.text[self.at] not in _STOP and not self.text[self.at].isspace():
            self.at += 1
        return self.text[start:self.at], start

    def length(self) -> None:
        self.skip()
        if self.at < len(self.text) and self.text[self.at] == ":":
            self.at += 1
            self.skip()
            match = _NUMBER.match(self.text, self.at)
            if not match:
                raise self.error(f"expected a branch length after ':', found {self.found()}")
            self.at = match.end()

    def language(self, label: str, index: int) -> Clade:
        codes = [c for c in re.findall(r"\[([^\]]*)\]", label) if _CODE.match(c.strip())]
        if codes:
            code, name = codes[-1].strip(), label.split("[", 1)[0]
        elif _CODE.match(label.strip()):
            code, name = label.strip(), ""
        else:
            raise self.error(f"language {label!r} has no code: write it as '{label} [deu_Latn]' "
                             f"(quoted) or as the code alone", index)
        if not name.strip():
            from hql_ray.settings.uriel import display_name

            iso, _, script = code.partition("_")
            name = display_name(iso, "_" + script if script else "")
        return Clade(_group_name(name), code=code, where=self.where(index))


def _group_name(label: str) -> str:
    """Glottolog's 'Germanic [germ1287]' -> Germanic; blanks -> underscores."""
    plain = re.sub(r"\[[^\]]*\]", " ", label).strip()
    plain = re.sub(r"-[a-z]-$", "", plain).strip()  # Glottolog's -l- (language) / -d- (dialect) marks
    return re.sub(r"\s+", "_", plain)


def parse(text: str, path: str | Path = "<newick>") -> Clade:
    """One Newick tree; languages with duplicate codes refused at their position."""
    root = _Reader(text, str(path)).tree()
    seen: dict[str, Clade] = {}
    for leaf in root.languages():
        if leaf.code in seen:
            first = seen[leaf.code].where
            raise leaf.error(f"language {leaf.code} appears twice (first at line {first[0]}, "
                             f"column {first[1]})", str(path))
        seen[leaf.code] = leaf
    return root


def dumps(root: Clade) -> str:
    """One line of Newick ending in ';' (languages as 'Name [code]')."""
    def text(clade: Clade) -> str:
        if clade.is_language:
            return _quote(f"{clade.name} [{clade.code}]")
        return "(" + ",".join(text(child) for child in clade.children) + ")" + _quote(clade.name)

    return text(root) + ";\n"


def _quote(label: str) -> str:
    if not label or _PLAIN.match(label):
        return label
    return "'" + label.replace("'", "''") + "'"


def is_newick(path: str | Path) -> bool:
    """By suffix (.nwk, .newick, ...), else by content: a tree file's header never starts with '('."""
    path = Path(path)
    if path.suffix.lower() in SUFFIXES:
        return True
    if path.suffix.lower() == ".csv" or not path.is_file():
        return False
    with path.open(encoding="utf-8-sig", errors="replace") as fh:
        return fh.read(4096).lstrip().startswith(("(", "["))


def read_tree(path: str | Path, levels=None, depth: int | None = None) -> LanguageTree:
    """Any tree file, CSV or Newick, as a loaded tree (Newick: level0, level1, ..., language)."""
    if not is_newick(path):
        return load_tree(path, levels)
    path = Path(path)
    if not path.is_file():
        raise InputError("tree file not found", path=path)
    level_columns, rows = to_rows(parse(path.read_text(encoding="utf-8-sig"), path), depth, str(path))
    return tree_from_rows(level_columns, rows, path, levels)


def tree_to_newick(tree: LanguageTree) -> str:
    return dumps(from_tree(tree))
