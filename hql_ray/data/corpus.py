"""Corpus layouts on disk -> examples per language and split, and the test sets.

Two layouts, found side by side: ours, ``<data_dir>/<corpus>/<code>/<corpus>_<code>_<split>.tsv``, and
the original's, read unchanged (``<data_dir>/GoldAMR_SilverText/data/amr3/<code>/...`` and so on; see
`corpus_file`). Each TSV line holds ``<single-line PENMAN AMR>\\t<sentence>``. Training uses the corpora
named in data.corpora; by default the original's (amr3 and flores) when the folder has both, otherwise
every corpus in it (a folder of one's own). The test sets (eval.test_sets) are any corpora's test splits,
by default those of the training corpora (`default_test_sets`). LDC2020T07 is a test set only.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from penman import Tree

from hql_ray.settings.config import LinearizeOptions
from hql_ray.data.amr import iter_text_lines, linearize, parse_amr_tree, read_penman_blocks, read_text_lines
from hql_ray.settings.errors import InputError
from hql_ray.settings.records import LEGACY_TEST_SET

SPLITS = ("train", "validation", "test")
# The corpora the original trained on; training uses these unless data.corpora names others.
DEFAULT_CORPORA = ("amr3", "flores")
LDC = "ldc2020t07"
# The test sets the paper's data has, in report order (any corpus's test split can be a test set too).
KNOWN_TEST_SETS = ("flores", LDC, "amr3")
LDC_LANGUAGES = ("deu_Latn", "eng_Latn", "ita_Latn", "spa_Latn")  # the languages LDC2020T07 has
# The original's layout: one folder per dataset script, the corpus under its data/ folder. English amr3 is
# gold text (GoldAMR_GoldText), every other language's amr3 is NLLB text (GoldAMR_SilverText), flores is
# silver AMR with gold text (SilverAMR_GoldText). Searched in this order, English in its own.
ORIGINAL_FOLDERS = ("GoldAMR_SilverText", "SilverAMR_GoldText", "GoldAMR_GoldText")
_ENGLISH_ORDER = ("GoldAMR_GoldText", "GoldAMR_SilverText", "SilverAMR_GoldText")


def _flat_file(root: Path, corpus: str, code: str, split: str) -> Path:
    return root / corpus / code / f"{corpus}_{code}_{split}.tsv"


def _candidates(root: Path, corpus: str, code: str, split: str) -> list[Path]:
    """Where (corpus, code, split) may live: our flat layout first, then the original's folders."""
    order = _ENGLISH_ORDER if code == "eng_Latn" else ORIGINAL_FOLDERS
    return [_flat_file(root, corpus, code, split)] + [
        _flat_file(root / folder / "data", corpus, code, split) for folder in order]


def corpus_file(data_dir: str | Path, corpus: str, code: str, split: str) -> Path:
    """The TSV of one corpus, language and split, in either layout; every reader goes through here.

    Ours: ``<dir>/<corpus>/<code>/<corpus>_<code>_<split>.tsv``. The original's, read unchanged:
    ``<dir>/GoldAMR_SilverText/data/amr3/<code>/amr3_<code>_<split>.tsv`` (English:
    ``GoldAMR_GoldText``), ``<dir>/SilverAMR_GoldText/data/flores/<code>/...``. The first that exists
    wins (ours first); when none does, the path where it is expected: in the original's layout if the
    corpus is laid out that way there, else ours."""
    root = Path(data_dir)
    found = _candidates(root, corpus, code, split)
    for path in found:
        if path.is_file():
            return path
    if (root / corpus).is_dir():
        return found[0]
    for path in found[1:]:
        if path.parent.parent.is_dir():  # <folder>/data/<corpus>/ exists
            return path
    return found[0]


def _corpus_folders(data_dir: str | Path) -> dict[str, list[Path]]:
    """Corpus name -> the folders holding it (ours: <dir>/<corpus>; the original's: <dir>/<F>/data/<corpus>)."""
    root = Path(data_dir)
    out: dict[str, list[Path]] = {}
    bases = [root] + [root / folder / "data" for folder in ORIGINAL_FOLDERS]
    for base in bases:
        if not base.is_dir():
            continue
        for sub in sorted(p for p in base.iterdir() if p.is_dir()):
            if any(lang_dir.is_dir() and any(_flat_file(base, sub.name, lang_dir.name, s).is_file() for s in SPLITS)
                   for lang_dir in sub.iterdir()):
                out.setdefault(sub.name, []).append(sub)
    return out


def discover_corpora(data_dir: str | Path) -> list[str]:
    """Every corpus laid out in ``data_dir`` (either layout), used for training or not."""
    return sorted(_corpus_folders(data_dir))


def select_corpora(data_dir: str | Path, corpora: list[str] | tuple[str, ...] | None) -> list[str]:
    """The training corpora: the named ones; by default the original's (amr3 and flores) when the data
    folder has both, otherwise every corpus in it (a corpus folder of one's own trains without flags).

    A name not in the data folder is an InputError naming what is."""
    available = discover_corpora(data_dir)
    if corpora:
        unknown = [c for c in corpora if c not in available]
        if unknown:
            raise InputError(f"unknown corpus {', '.join(unknown)}; available: {', '.join(available) or 'none'}",
                             path=data_dir)
        return list(corpora)
    if all(c in available for c in DEFAULT_CORPORA):
        return list(DEFAULT_CORPORA)
    return available


def default_test_sets(data_dir: str | Path, corpora: list[str] | tuple[str, ...]) -> list[str]:
    """The test sets scored when eval.test_sets is left to the data: the original's (flores and LDC2020T07)
    when flores is trained on, and every other training corpus's test split but amr3's (the original never
    scored amr3 test); without flores, the test split of every training corpus. LDC2020T07 also whenever the
    data folder has it. In report order (`sorted_test_sets`)."""
    with_flores = "flores" in corpora
    names = [c for c in corpora if not (with_flores and c == "amr3")]
    if with_flores or ldc_folder_exists(data_dir):
        names.append(LDC)
    return sorted_test_sets(dict.fromkeys(names))


def test_sets_of(data_dir: str | Path, corpora: list[str] | None, test_sets: list[str] | None) -> list[str]:
    """The test sets a run scores: eval.test_sets, or when it is None the data's (`default_test_sets`)."""
    if test_sets is not None:
        return list(test_sets)
    return default_test_sets(data_dir, select_corpora(data_dir, corpora))


def sorted_test_sets(names: Iterable[str]) -> list[str]:
    """Test sets in report order: flores, ldc2020t07, amr3, then the others by name."""
    return sorted(names, key=order_key_of_test_set)


def order_key_of_test_set(name: str | None) -> tuple:
    """Sort key of a test set in tables: flores, ldc2020t07, amr3, the others by name, an older run's
    "union", then None (no scores)."""
    if name is None:
        return (len(KNOWN_TEST_SETS) + 2, "")
    if name in KNOWN_TEST_SETS:
        return (KNOWN_TEST_SETS.index(name), name)
    return (len(KNOWN_TEST_SETS) + (1 if name == LEGACY_TEST_SET else 0), str(name))


def in_both_layouts(data_dir: str | Path, corpora: list[str]) -> dict[str, list[Path]]:
    """Corpora laid out both ours and the original's way in one folder -> their folders (ours is read
    first, file by file)."""
    root = Path(data_dir)
    out = {}
    for name, folders in _corpus_folders(root).items():
        if name in corpora and root / name in folders and len(folders) > 1:
            out[name] = folders
    return out


def corpus_languages(data_dir: str | Path, corpus: str) -> list[str]:
    """The language folders of one corpus, in either layout."""
    return sorted({d.name for folder in _corpus_folders(data_dir).get(corpus, []) for d in folder.iterdir() if d.is_dir()})


def unused_corpora(data_dir: str | Path, used: list[str]) -> list[str]:
    """Corpora laid out in the data folder that this run does not train on (reported, never used)."""
    return [c for c in discover_corpora(data_dir) if c not in used]


def count_examples(
    data_dir: str | Path, code: str, split: str, corpora: list[str] | None = None, cap_per_corpus: int | None = None
) -> int:
    """Non-blank lines over the corpora for one language and split, each corpus capped, without parsing."""
    total = 0
    for corpus in select_corpora(_existing_dir(data_dir), corpora):
        path = corpus_file(data_dir, corpus, code, split)
        if not path.is_file():
            continue
        with open(path, "rb") as fh:
            n = sum(1 for raw in fh if raw.strip())
        total += n if cap_per_corpus is None else min(n, cap_per_corpus)
    return total


@dataclass(frozen=True)
class Example:
    """One AMR/sentence pair. No prompt here: dataset.py adds it and picks the direction."""

    amr: str  # single-line linearized PENMAN
    text: str  # the sentence
    lang: str  # FLORES code
    corpus: str
    origin: str  # "path:line", for error messages and tracing a bad example back


def read_tsv(
    path: str | Path,
    lang: str,
    corpus: str,
    options: LinearizeOptions | None = None,
    skip_bad: bool = False,
    on_bad: Callable[[InputError], None] | None = None,
    amr_cache: dict[str, str | InputError] | None = None,
) -> tuple[list[Example], int]:
    """`<AMR>\\t<sentence>` lines -> (examples, n_skipped); blank lines pass silently.

    Every line is checked (a tab, both sides non-empty, a well-formed graph). The AMR never holds a
    tab, so a line is split on its first tab and the rest is the sentence. With `skip_bad`, each bad
    line is skipped and handed to `on_bad` (if given). `amr_cache` memoizes the parse + linearization
    by the AMR's text across calls with the same `options`: the languages of a parallel corpus share
    their graphs, so a caller reading them all parses each graph once."""
    examples: list[Example] = []
    skipped = 0
    for i, raw in iter_text_lines(path):
        try:
            if isinstance(raw, InputError):
                raise raw
            if not raw.strip():
                continue
            examples.append(_tsv_example(raw, path, i, lang, corpus, options, amr_cache))
        except InputError as err:
            if not skip_bad:
                raise
            skipped += 1
            if on_bad is not None:
                on_bad(err)
    return examples, skipped


def _tsv_example(
    raw: str, path: str | Path, line: int, lang: str, corpus: str, options: LinearizeOptions | None,
    amr_cache: dict[str, str | InputError] | None = None,
) -> Example:
    amr, tab, text = raw.partition("\t")
    if not tab:
        raise InputError("no tab between the AMR and the sentence", path=path, line=line)
    if not amr.strip():
        raise InputError("empty AMR side (nothing before the tab)", path=path, line=line)
    text = text.strip()
    if not text:
        raise InputError("empty sentence side (nothing after the tab)", path=path, line=line)
    if amr_cache is None:
        linear = linearize(parse_amr_tree(amr, path, line), options)
    else:
        linear = amr_cache.get(amr)
        if linear is None:
            try:
                linear = linearize(parse_amr_tree(amr), options)
            except InputError as err:
                linear = err
            amr_cache[amr] = linear
        if isinstance(linear, InputError):  # the cached problem, placed at this file's line
            raise InputError(linear.problem, path=path, line=line)
    return Example(amr=linear, text=text, lang=lang, corpus=corpus, origin=f"{path}:{line}")


def cap_sample(examples: list[Example], cap: int | None, seed: int = 0) -> list[Example]:
    """At most `cap` examples, a seeded sample kept in file order (same seed -> same subset).

    The generator depends on the seed only, so languages of a parallel corpus with equally many
    lines keep the same rows (the same graphs)."""
    if cap is None or len(examples) <= cap:
        return list(examples)
    if cap < 0:
        raise ValueError(f"cap must be >= 0, got {cap}")
    keep = sorted(random.Random(seed).sample(range(len(examples)), cap))
    return [examples[i] for i in keep]


def load_examples(
    data_dir: str | Path,
    code: str,
    split: str,
    corpora: list[str] | None = None,
    cap: int | None = None,
    seed: int = 0,
    options: LinearizeOptions | None = None,
    skip_bad: bool = False,
    cap_per_corpus: int | None = None,
    first_per_corpus: int | None = None,
    amr_cache: dict[str, str | InputError] | None = None,
) -> tuple[list[Example], int]:
    """One language and split over the training corpora (in order) -> (examples, n_skipped).

    Each corpus gives its first `first_per_corpus` rows (validation as the original takes it), then a
    seeded sample of at most `cap_per_corpus` (the training cap, per corpus); `cap` then samples the
    union. A corpus without a file for this language is passed over (check_layout is the strict check);
    no file at all is an InputError."""
    used = select_corpora(_existing_dir(data_dir), corpora)
    examples: list[Example] = []
    skipped = 0
    files = 0
    for corpus in used:
        path = corpus_file(data_dir, corpus, code, split)
        if not path.is_file():
            continue
        files += 1
        found, bad = read_tsv(path, code, corpus, options=options, skip_bad=skip_bad, amr_cache=amr_cache)
        if first_per_corpus is not None:
            found = found[:first_per_corpus]
        examples.extend(cap_sample(found, cap_per_corpus, seed))
        skipped += bad
    if not files:
        expected = corpus_file(data_dir, used[0] if used else "<corpus>", code, split)
        raise InputError(f"no corpus file for {code} {split} in {', '.join(used)}", path=expected)
    return cap_sample(examples, cap, seed), skipped


def _existing_dir(data_dir: str | Path) -> Path:
    root = Path(data_dir)
    if not root.is_dir():
        raise InputError("data directory does not exist", path=root)
    if not discover_corpora(root):
        raise InputError(
            "no corpus in the data directory (expected <corpus>/<code>/<corpus>_<code>_<split>.tsv, or the "
            "original's GoldAMR_SilverText/data/amr3/..., SilverAMR_GoldText/data/flores/...)", path=root
        )
    return root


def _code_and_name(lang: Any) -> tuple[str, str | None]:
    """A code string, or a tree Language (code, name)."""
    if isinstance(lang, str):
        return lang, None
    return lang.code, getattr(lang, "name", None)


def check_layout(
    data_dir: str | Path,
    codes: Iterable[Any],
    corpora: list[str] | None = None,
    splits: Iterable[str] = SPLITS,
) -> list[str]:
    """Every (corpus, language, split) file exists, before any training -> the corpora used.

    `codes` are FLORES codes or tree Languages (then the error names the language too)."""
    used = select_corpora(_existing_dir(data_dir), corpora)
    for lang in codes:
        code, name = _code_and_name(lang)
        for corpus in used:
            for split in splits:
                path = corpus_file(data_dir, corpus, code, split)
                if not path.is_file():
                    label = f"{code} ({name})" if name else code
                    raise InputError(f"missing corpus file for {label}", path=path)
    return used


# ---- LDC2020T07 (test only) ------------------------------------------------------------------------
def ldc_dir(data_dir: str | Path) -> Path | None:
    """The folder holding graph_amr/graph_amr-test.txt: the original's <dir>/ldc2020t07/data, ours
    <dir>/ldc2020t07, or (older releases) <dir> itself; None when there is none."""
    root = Path(data_dir)
    for base in (root / LDC / "data", root / LDC, root):
        if (base / "graph_amr" / "graph_amr-test.txt").is_file():
            return base
    return None


def ldc_folder_exists(data_dir: str | Path) -> bool:
    """Whether the data folder has any LDC2020T07 folder at all (complete or not)."""
    root = Path(data_dir)
    return (root / LDC).is_dir() or (root / "graph_amr").is_dir()


def ldc_text_file(data_dir: str | Path, code: str) -> Path:
    """Where a language's LDC2020T07 sentences are (or are expected)."""
    base = ldc_dir(data_dir)
    if base is None:
        root = Path(data_dir)
        base = root / LDC / "data" if (root / LDC / "data").is_dir() else root / LDC
    return base / code / f"{code}-test.txt"


def find_ldc(data_dir: str | Path, code: str) -> tuple[Path, Path] | None:
    """The LDC2020T07 pair (graph file, sentence file) of one language, or None."""
    base = ldc_dir(data_dir)
    if base is None:
        return None
    text_file = base / code / f"{code}-test.txt"
    return (base / "graph_amr" / "graph_amr-test.txt", text_file) if text_file.is_file() else None


def _ldc_graphs(
    graph_file: str | Path, amr_cache: dict[str, Tree | InputError] | None = None
) -> list[tuple[Tree, int]]:
    """Graphs of the LDC graph file, with their lines.

    The original's file holds one graph per line (its reader zips the lines with the sentences). A file
    with a metadata comment ('#') or a line starting with a role (':', a continuation) is multi-line
    PENMAN (blank-line separated blocks); anything else is read a line at a time, whatever its leading
    whitespace, so a bad line is reported as that line and never turns the file into one block."""
    lines = read_text_lines(graph_file)
    if any(l.lstrip().startswith(("#", ":")) for l in lines):
        entries, _ = read_penman_blocks(graph_file)
        return [(tree, line) for tree, _, line in entries]
    out = []
    for i, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        if amr_cache is None:
            out.append((parse_amr_tree(text, graph_file, i), i))
            continue
        tree = amr_cache.get(text)
        if tree is None:
            try:
                tree = parse_amr_tree(text)
            except InputError as err:
                tree = err
            amr_cache[text] = tree
        if isinstance(tree, InputError):
            raise InputError(tree.problem, path=graph_file, line=i)
        out.append((tree, i))
    return out


def read_ldc(
    graph_file: str | Path, text_file: str | Path, lang: str, options: LinearizeOptions | None = None,
    amr_cache: dict | None = None,
) -> list[Example]:
    """LDC2020T07 (AMR 2.0 test in deu/eng/ita/spa): graphs and sentences aligned by position."""
    graphs = _ldc_graphs(graph_file, amr_cache)
    texts = read_text_lines(text_file)
    while texts and not texts[-1].strip():
        texts.pop()
    if len(graphs) != len(texts):
        raise InputError(
            f"{len(graphs)} graphs in {graph_file} but {len(texts)} sentences in {text_file}: "
            "the files must be aligned one graph per sentence",
            path=text_file,
        )
    out = []
    for (tree, gline), (tline, text) in zip(graphs, enumerate(texts, start=1)):
        if not text.strip():
            raise InputError("empty sentence", path=text_file, line=tline)
        out.append(
            Example(
                amr=linearize(tree, options),
                text=text.strip(),
                lang=lang,
                corpus=LDC,
                origin=f"{graph_file}:{gline}",
            )
        )
    return out


# ---- test sets -------------------------------------------------------------------------------------
def files_of_test_set(data_dir: str | Path, code: str, test_set: str) -> list[Path] | None:
    """The files one test set of one language is read from, or None when it has none."""
    if test_set == LDC:
        pair = find_ldc(data_dir, code)
        return list(pair) if pair else None
    path = corpus_file(data_dir, test_set, code, "test")
    return [path] if path.is_file() else None


def load_test_set(
    data_dir: str | Path, code: str, test_set: str, options: LinearizeOptions | None = None,
    skip_bad: bool = False,
) -> list[Example] | None:
    """One language's test examples of one test set, in file order; None = no such test set for it.

    `flores` and `amr3` are that corpus's test split (TSV, either layout); `ldc2020t07` is the LDC pair
    (deu/eng/ita/spa only). `skip_bad` skips bad TSV lines (an LDC pair is all or nothing: its lines are
    aligned by position)."""
    files = files_of_test_set(data_dir, code, test_set)
    if files is None:
        return None
    if test_set == LDC:
        return read_ldc(files[0], files[1], code, options=options)
    examples, _ = read_tsv(files[0], code, test_set, options=options, skip_bad=skip_bad)
    return examples
