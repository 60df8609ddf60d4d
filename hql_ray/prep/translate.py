"""`hql-ray translate`: the AMR 3.0 release -> the `amr3` corpus in every language, with NLLB on Ray Data.

The HQL data step the original left to the user: each English sentence of AMR 3.0 (LDC2020T02) is
machine-translated into every target language; each graph is paired with each translation. English
keeps the gold sentence. Reading and checking happen here, before Ray starts; the generation itself
is hql_ray.prep.sharded (Ray Data, resumable shards) with hql_ray.prep.seq2seq_actor (one model per actor).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from hql_ray.data.amr import linearize, read_penman_blocks
from hql_ray.settings.errors import InputError
from hql_ray.outputs.manifest import atomic_write_text

ENGLISH = "eng_Latn"
# AMR 3.0 release folder -> our split name (the original's too).
RELEASE_SPLITS = {"training": "train", "dev": "validation", "test": "test"}
CODE_RE = re.compile(r"^[a-z]{3}_[A-Z][a-z]{3}$")  # FLORES-200 codes: deu_Latn, zho_Hans
# Where the original HQL data scripts read each corpus (paths under the data folder).
ORIGINAL_DIRS = {("amr3", "silver"): "GoldAMR_SilverText/data/amr3", ("amr3", "gold"): "GoldAMR_GoldText/data/amr3",
                 ("flores", "silver"): "SilverAMR_GoldText/data/flores", ("flores", "gold"): "SilverAMR_GoldText/data/flores"}
LAYOUTS = ("ours", "original", "both")


@dataclass
class Entry:
    """One graph of the release: single-line PENMAN, its English sentence, where it came from."""

    amr: str
    snt: str
    origin: str  # file:line of the graph's block


def find_split_root(release_dir: str | Path) -> Path:
    """The folder holding training/, dev/, test/: the release root (data/amrs/split/) or below it."""
    root = Path(release_dir)
    if not root.is_dir():
        raise InputError("AMR release folder does not exist", path=root)
    for candidate in (root / "data" / "amrs" / "split", root / "amrs" / "split", root / "split", root):
        if any((candidate / name).is_dir() for name in RELEASE_SPLITS):
            return candidate
    raise InputError("no AMR 3.0 split folders here (expected data/amrs/split/{training,dev,test}/*.txt)", path=root)


def read_release(release_dir: str | Path, skip_bad: bool = False) -> tuple[dict[str, list[Entry]], list[str]]:
    """{split: entries in file order} and the problems skipped with `skip_bad` (file:line: problem).

    A graph that does not parse, or has no `# ::snt` sentence, is an InputError naming file and line,
    unless skip_bad (then it is left out and listed)."""
    split_root = find_split_root(release_dir)
    out: dict[str, list[Entry]] = {}
    skipped: list[str] = []
    for folder, split in RELEASE_SPLITS.items():
        files = sorted((split_root / folder).glob("*.txt"))
        if not files:
            continue
        entries = out.setdefault(split, [])
        for path in files:
            for entry in _read_file(path, skipped if skip_bad else None):
                entries.append(entry)
    if not out:
        raise InputError("no *.txt AMR files under training/, dev/ or test/", path=split_root)
    return out, skipped


def _read_file(path: Path, skipped: list[str] | None) -> list[Entry]:
    """The graphs of one release file; a bad block raises, or is listed in `skipped` if given."""
    problems: list[tuple[int, str]] = []  # (line, message): listed in file order
    blocks, _ = read_penman_blocks(path, skip_bad=skipped is not None,
                                   on_bad=lambda err: problems.append((err.line or 0, str(err))))
    entries = []
    for tree, meta, start in blocks:
        snt = " ".join(meta.get("snt", "").split())
        if not snt:
            err = InputError("graph without a `# ::snt` sentence", path=path, line=start)
            if skipped is None:
                raise err
            problems.append((start, str(err)))
            continue
        entries.append(Entry(linearize(tree), snt, f"{path}:{start}"))
    if skipped is not None:
        skipped.extend(message for _, message in sorted(problems))
    return entries


def parse_langs(spec: str, allow_english: bool = True) -> dict[str, str]:
    """`deu_Latn,ltz_Latn` or `deu_Latn=__de__` (an M2M100 token) -> {code: token}; bad codes listed."""
    langs: dict[str, str] = {}
    bad = []
    for part in [p.strip() for p in spec.split(",") if p.strip()]:
        code, _, token = part.partition("=")
        if not CODE_RE.match(code) or (code == ENGLISH and not allow_english):
            bad.append(code)
        langs[code] = token or code
    if bad:
        raise InputError(f"not a FLORES-200 language code: {', '.join(bad)} (expected e.g. deu_Latn)")
    if not langs:
        raise InputError("--langs is empty")
    return langs


def check_lang_tokens(tokenizer, langs: dict[str, str], model: str) -> None:
    """Every target language must be a token the model knows (NLLB: `deu_Latn`), all listed at once."""
    vocab = tokenizer.get_vocab()
    unknown = [f"{code}" + (f" (token {tok})" if tok != code else "") for code, tok in langs.items()
               if tok not in vocab]
    if unknown:
        raise InputError(f"the model {model} has no language token for: {', '.join(unknown)}; NLLB codes look "
                         "like deu_Latn, an M2M100 token is given as CODE=__de__")


def corpus_paths(out_dir: str | Path, corpus: str, code: str, split: str, layout: str) -> list[Path]:
    """Where one TSV goes: ours (`<corpus>/<code>/...`), the original's, or both."""
    name = f"{corpus}_{code}_{split}.tsv"
    paths = []
    if layout in ("ours", "both"):
        paths.append(Path(out_dir) / corpus / code / name)
    if layout in ("original", "both"):
        side = "gold" if code == ENGLISH else "silver"
        paths.append(Path(out_dir) / ORIGINAL_DIRS[(corpus, side)] / code / name)
    return paths


def write_corpus(out_dir: str | Path, corpus: str, code: str, split: str, pairs: list[tuple[str, str]],
                 layout: str) -> list[Path]:
    """`<graph>\\t<sentence>` lines, each file replaced atomically (no half-written corpus file)."""
    text = "".join(f"{amr}\t{snt}\n" for amr, snt in pairs)
    paths = corpus_paths(out_dir, corpus, code, split, layout)
    for path in paths:
        atomic_write_text(path, text)
    return paths


def tiny_model_dir(cache: str | Path) -> str:
    """`--model tiny`: a random tiny NLLB-shaped model built once into `cache` (no download)."""
    from hql_ray.prep.tiny_nllb import build_tiny_nllb

    return build_tiny_nllb(Path(cache))
