"""`hql-ray parse`: FLORES-200 English -> silver AMR graphs -> the `flores` corpus in every language.

The other HQL data step: the English FLORES sentences are parsed into AMR (the paper used a
transition parser; here any text-to-AMR seq2seq model, or our own `--direction text2amr` run), each
graph is checked with penman (a graph that does not parse is counted and never written), and every
language's sentence of the same row is paired with it. Reading and checks happen here, before Ray;
generation is hql_ray.prep.sharded + hql_ray.prep.seq2seq_actor, like `hql-ray translate`.
"""

from __future__ import annotations

import re
from pathlib import Path

from hql_ray.data.amr import AMRSyntaxError, linearize, parse_tree, read_text_lines
from hql_ray.settings.errors import InputError
from hql_ray.prep.translate import ENGLISH

FLORES_SPLITS = ("dev", "devtest")
OUR_SPLITS = ("train", "validation", "test")
DEFAULT_SPLIT_MAP = "dev=train,devtest=test"
_FILE_RE = re.compile(r"^([a-z]{3}_[A-Z][a-z]{3})\.(dev|devtest)$")


def parse_split_map(spec: str) -> dict[str, str]:
    """`dev=train,devtest=test` -> {FLORES split: our split}; every name checked."""
    mapping: dict[str, str] = {}
    for part in [p.strip() for p in spec.split(",") if p.strip()]:
        src, eq, dst = part.partition("=")
        if not eq or src not in FLORES_SPLITS or dst not in OUR_SPLITS:
            raise InputError(f"--split-map: {part!r} is not FLORES_SPLIT=SPLIT with FLORES_SPLIT in "
                             f"{'/'.join(FLORES_SPLITS)} and SPLIT in {'/'.join(OUR_SPLITS)}")
        mapping[src] = dst
    if len(set(mapping.values())) != len(mapping):
        raise InputError(f"--split-map: two FLORES splits go to the same split ({spec})")
    return mapping


def find_flores_files(flores_dir: str | Path) -> dict[str, dict[str, Path]]:
    """{FLORES split: {code: file}} from `<dir>/<split>/<code>.<split>` (the release) or `<dir>/<code>.<split>`."""
    root = Path(flores_dir)
    if not root.is_dir():
        raise InputError("FLORES folder does not exist", path=root)
    found: dict[str, dict[str, Path]] = {}
    for folder in (root, root / "dev", root / "devtest", root / "flores200_dataset" / "dev",
                   root / "flores200_dataset" / "devtest"):
        for path in sorted(folder.glob("*.dev*")) if folder.is_dir() else []:
            m = _FILE_RE.match(path.name)
            if m:
                found.setdefault(m.group(2), {}).setdefault(m.group(1), path)
    if not any(ENGLISH in files for files in found.values()):
        raise InputError(f"no English FLORES file ({ENGLISH}.dev or {ENGLISH}.devtest, in dev/ and devtest/ or here)",
                         path=root)
    return found


def read_flores(files: dict[str, dict[str, Path]], langs: list[str] | None, split_map: dict[str, str],
                skip_bad: bool = False) -> tuple[dict[str, dict[str, list[str | None]]], list[str]]:
    """{FLORES split: {code: sentences}}, line-aligned with English; problems skipped with skip_bad.

    A blank line is an error naming file and line (with skip_bad: that row is left out for that
    language, shown as None). A file whose line count differs from English's is always an error."""
    out: dict[str, dict[str, list[str | None]]] = {}
    skipped: list[str] = []
    available = sorted({code for f in files.values() for code in f})
    wanted = langs or available
    missing = [c for c in wanted if not any(c in files.get(s, {}) for s in split_map)]
    if missing:
        raise InputError(f"no FLORES file for: {', '.join(missing)} (found: {', '.join(available)})")
    for split in split_map:
        if ENGLISH not in files.get(split, {}):
            continue
        english = read_text_lines(files[split][ENGLISH])
        while english and not english[-1].strip():
            english.pop()
        out[split] = {}
        for code in dict.fromkeys([ENGLISH, *wanted]):
            path = files[split].get(code)
            if path is None:
                raise InputError(f"no {split} file for {code} (English has one)", path=files[split][ENGLISH])
            lines = english if code == ENGLISH else read_text_lines(path)
            while lines and not lines[-1].strip():
                lines = lines[:-1]
            if len(lines) != len(english):
                raise InputError(f"{len(lines)} lines but {len(english)} in {files[split][ENGLISH]}: "
                                 "FLORES files must be line-aligned", path=path)
            row: list[str | None] = []
            for i, text in enumerate(lines, start=1):
                if not text.strip():
                    err = InputError("empty sentence", path=path, line=i)
                    if not skip_bad:
                        raise err
                    skipped.append(str(err))
                    row.append(None)
                else:
                    row.append(" ".join(text.split()))
            out[split][code] = row
    if not out:
        raise InputError(f"no English file for the splits of --split-map ({', '.join(split_map)})")
    return out, skipped


def check_graph(text: str) -> tuple[str | None, str | None]:
    """(single-line graph, None) if `text` is one well-formed PENMAN graph, else (None, the problem)."""
    if not text.strip():
        return None, "empty output"
    try:
        return linearize(parse_tree(text)), None
    except AMRSyntaxError as err:
        return None, str(err)
    except Exception as err:  # noqa: BLE001 - model output must never crash the run
        return None, f"{type(err).__name__}: {err}"


def assign_splits(n_rows: int, target: str, validation: int, carve: bool) -> list[str]:
    """Our split for each row of a FLORES split: its target, with the last `validation` rows of the
    train target held out for validation when no FLORES split maps to validation (same rows in every language)."""
    labels = [target] * n_rows
    if carve and target == "train" and validation:
        if validation >= n_rows:
            raise InputError(f"--validation-size {validation} leaves no training rows ({n_rows} in all)")
        labels[n_rows - validation:] = ["validation"] * validation
    return labels


def parser_spec(parser: str, lang: str = ENGLISH) -> tuple[dict, str]:
    """The actor spec for `--parser`: a hql-ray text2amr run (manifest.json) or a seq2seq model -> (spec, kind)."""
    path = Path(parser).expanduser()
    if (path / "manifest.json").is_file():
        from hql_ray.outputs.generate import load_generator

        gen = load_generator(path, lang)  # reads the manifest only; the model loads in the actors
        if gen.direction != "text2amr":
            raise InputError(f"the run at {path} generates text ({gen.direction}); a parser is a text2amr run",
                             path=path / "manifest.json")
        return {"run": str(path.resolve()), "run_lang": gen.language.code}, "run"
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise InputError("parser folder holds neither manifest.json (a run) nor config.json (a model)", path=path)
        return {"model": str(path.resolve())}, "model"
    if parser.startswith((".", "/", "~")) or parser.count("/") > 1:
        raise InputError("parser folder does not exist", path=parser)
    return {"model": parser}, "model"  # a hub id
