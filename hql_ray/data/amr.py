"""PENMAN reading and one-line linearization of AMR graphs.

Parsing is penman's; this module only makes it strict (penman silently ignores text after the
graph and accepts nodes without a concept or roles without a target, which would train or score
garbage) and turns its errors into ``InputError`` naming the file and line. Linearization works on
penman's tree, so the default output keeps the original's layout: ``(w / want-01 :ARG0 (b / boy))``.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Callable, Iterator

import penman
from penman import Graph, Tree
from penman._lexer import PENMAN_RE, lex  # penman's own lexer: lets us see text after the graph
from penman._parse import _parse
from penman.exceptions import DecodeError, PenmanError

from hql_ray.settings.config import LinearizeOptions
from hql_ray.settings.errors import InputError


class _DropParseWarnings(logging.Filter):
    """penman logs 'Missing target/concept' and goes on; we raise instead, so the log is noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Missing ")


logging.getLogger("penman").addFilter(_DropParseWarnings())

_SENSE_RE = re.compile(r"-\d+(?=~|$)")  # want-01 -> want ; keeps an alignment (want-01~e.3)
_META_RE = re.compile(r"(?:^|\s)::(\S+)")  # `# ::id x ::date y`; a bare "::" inside a sentence is not a key


class AMRSyntaxError(ValueError):
    """A graph penman cannot read, or reads only by guessing; the message is one line."""


def _role(role: str) -> str:
    return role.split("~", 1)[0]


def _check_node(node: Any, seen: dict[str, str]) -> None:
    """Reject what penman only warns about: a node without concept, a role without target,
    a variable defined twice (penman would turn it into a different graph)."""
    var, branches = node
    if not branches or branches[0][0] != "/" or branches[0][1] is None:
        raise AMRSyntaxError(f"node {var} has no concept")
    if var in seen:
        raise AMRSyntaxError(f"variable {var} is defined twice")
    seen[var] = branches[0][1]
    for role, target in branches[1:]:
        if role == "/":
            raise AMRSyntaxError(f"node {var} has two concepts")
        if target is None:
            raise AMRSyntaxError(f"role {role} of node {var} has no target")
        if isinstance(target, tuple):
            _check_node(target, seen)


def _decode_error(e: DecodeError, first_line: int, multiline: bool) -> str:
    """penman's message with where it happened, as a line of the FILE when the graph spans lines."""
    if not e.lineno:
        return e.message
    if multiline:
        return f"{e.message} (line {first_line + e.lineno - 1}, character {e.offset + 1})"
    return f"{e.message} (character {e.offset + 1})"


def parse_tree(text: str, first_line: int = 1) -> Tree:
    """Exactly one well-formed graph (comments allowed before it) -> penman Tree, else AMRSyntaxError.

    `first_line` is the file line `text` starts on, so errors in a multi-line block name a file line."""
    tokens = lex(text, pattern=PENMAN_RE)
    try:
        tree = _parse(tokens)
        if tokens:
            extra = tokens.peek()
            if extra.type == "RPAREN":
                raise tokens.error("unbalanced parentheses: an extra ')' after the graph", token=extra)
            raise tokens.error("unexpected text after the graph", token=extra)
    except DecodeError as e:
        reason = _decode_error(e, first_line, "\n" in text.strip())
        if e.message == "Unexpected end of input" and text.strip():
            reason = f"unbalanced parentheses: a ')' is missing at the end (penman: {reason})"
        raise AMRSyntaxError(reason) from None
    _check_node(tree.node, {})
    return tree


def parse_amr(text: str, path: str | Path | None = None, line: int | None = None) -> Graph:
    """One PENMAN graph (single-line TSV cell or a whole block) -> penman Graph; InputError if malformed."""
    return to_graph(parse_amr_tree(text, path, line), path, line)


def parse_amr_tree(text: str, path: str | Path | None = None, line: int | None = None) -> Tree:
    """Like parse_amr, but the penman Tree (what linearize works on; skips building the graph)."""
    if not text.strip():
        raise InputError("empty AMR", path=path, line=line)
    try:
        return parse_tree(text)
    except AMRSyntaxError as e:
        raise InputError(f"malformed AMR: {e}", path=path, line=line) from None


def to_graph(tree: Tree, path: str | Path | None = None, line: int | None = None) -> Graph:
    """penman's interpretation of a tree as a graph (keeps the layout for re-encoding)."""
    try:
        return penman.interpret(tree)
    except PenmanError as e:
        raise InputError(f"malformed AMR: {e}", path=path, line=line) from None


def parse_metadata(comment_lines: list[str]) -> dict[str, str]:
    """`# ::id x ::date y` / `# ::snt A sentence.` -> {"id": "x", "date": "y", "snt": "A sentence."}."""
    meta: dict[str, str] = {}
    for raw in comment_lines:
        body = raw.lstrip("#")
        keys = list(_META_RE.finditer(body))
        for i, m in enumerate(keys):
            end = keys[i + 1].start() if i + 1 < len(keys) else len(body)
            meta[m.group(1)] = body[m.end():end].strip()
    return meta


def _blocks(lines: list[str]) -> list[tuple[int, list[str]]]:
    """Blank-line separated blocks as (1-based first line, lines)."""
    blocks: list[tuple[int, list[str]]] = []
    current: list[str] = []
    start = 0
    for i, raw in enumerate(lines, start=1):
        if raw.strip():
            if not current:
                start = i
            current.append(raw)
        elif current:
            blocks.append((start, current))
            current = []
    if current:
        blocks.append((start, current))
    return blocks


def iter_text_lines(path: str | Path) -> Iterator[tuple[int, str | InputError]]:
    """(1-based line, text without line end), or an InputError in place of a line that is not UTF-8
    (so a caller that skips bad lines can skip it too)."""
    p = Path(path)
    if not p.is_file():
        raise InputError("file does not exist", path=p)
    with open(p, "rb") as fh:
        for i, raw in enumerate(fh, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield i, InputError(f"not UTF-8 text ({e.reason} at byte {e.start})", path=p, line=i)
                continue
            if i == 1:
                text = text.lstrip("\ufeff")
            yield i, text.rstrip("\r\n")


def read_text_lines(path: str | Path) -> list[str]:
    """A UTF-8 file's lines without line ends; InputError naming the line that is not UTF-8."""
    lines = []
    for _, text in iter_text_lines(path):
        if isinstance(text, InputError):
            raise text
        lines.append(text)
    return lines


def read_penman_blocks(
    path: str | Path, skip_bad: bool = False, on_bad: Callable[[InputError], None] | None = None
) -> tuple[list[tuple[Tree, dict[str, str], int]], int]:
    """Trees of a multi-line PENMAN file with metadata and block line; (entries, n_skipped).

    A block holding only comments (a file header) is not a graph and is passed over. A malformed
    block raises an InputError naming its first line, or with `skip_bad` is counted and handed to
    `on_bad`."""
    entries = []
    skipped = 0
    for start, block in _blocks(read_text_lines(path)):
        comments = [b for b in block if b.lstrip().startswith("#")]
        if len(comments) == len(block):
            continue
        try:
            tree = parse_tree("\n".join(block), first_line=start)
        except AMRSyntaxError as e:
            err = InputError(f"malformed AMR in the block starting here: {e}", path=path, line=start)
            if not skip_bad:
                raise err from None
            skipped += 1
            if on_bad is not None:
                on_bad(err)
            continue
        entries.append((tree, parse_metadata(comments), start))
    return entries, skipped


def _strip_sense(concept: str) -> str:
    if concept.startswith('"'):
        return concept
    return _SENSE_RE.sub("", concept, count=1)


def _concepts(node: Any, out: dict[str, str]) -> dict[str, str]:
    var, branches = node
    for role, target in branches:
        if role == "/" and var not in out:
            out[var] = target if target is not None else var
        elif isinstance(target, tuple):
            _concepts(target, out)
    return out


def _transform(node: Any, opts: LinearizeOptions) -> Any:
    """The tree node with :wiki edges and/or sense suffixes removed (variables untouched)."""
    var, branches = node
    new = []
    for role, target in branches:
        if not opts.keep_wiki and _role(role) == ":wiki":
            continue
        if role == "/" and target is not None and not opts.keep_senses:
            target = _strip_sense(target)
        elif isinstance(target, tuple):
            target = _transform(target, opts)
        new.append((role, target))
    return (var, new)


def _no_vars(node: Any, concepts: dict[str, str], root: bool) -> str:
    """Variable-free form: `(want-01 :ARG0 boy :ARG1 (go-02 :ARG0 boy))`; a node with no edges is its
    bare concept (the root keeps its parentheses), a re-entrancy is the concept of the node it names."""
    var, branches = node
    concept = concepts.get(var, var)
    parts = [concept]
    for role, target in branches:
        if role == "/":
            continue
        if isinstance(target, tuple):
            parts.append(f"{role} {_no_vars(target, concepts, False)}")
        else:
            parts.append(f"{role} {concepts.get(target, target)}")
    if len(parts) == 1 and not root:
        return concept
    return "(" + " ".join(parts) + ")"


def linearize(graph_or_text: Graph | Tree | str, options: LinearizeOptions | None = None) -> str:
    """One-line PENMAN; the default keeps variables, :wiki and senses (the original's format)."""
    opts = options or LinearizeOptions()
    if isinstance(graph_or_text, str):
        tree = parse_amr_tree(graph_or_text, None, None)
    elif isinstance(graph_or_text, Tree):
        tree = graph_or_text
    elif isinstance(graph_or_text, Graph):
        graph = graph_or_text
        saved, graph.metadata = graph.metadata, {}  # metadata would come out as comment lines
        try:
            tree = penman.configure(graph)
        finally:
            graph.metadata = saved
    else:
        raise TypeError(f"linearize needs a penman Graph, Tree or str, not {type(graph_or_text).__name__}")
    node = _transform(tree.node, opts)
    if opts.keep_variables:
        return penman.format(Tree(node), indent=None)
    return _no_vars(node, _concepts(node, {}), root=True)
