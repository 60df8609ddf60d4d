"""URIEL's language data as the `lang2vec` wheel ships it: Glottolog family paths, typological (k-NN
completed) and geographic feature vectors, learned vectors; FLORES codes read as the ISO 639-3 codes
URIEL uses; display names for a tree file's ``language`` column.

lang2vec 1.1.2's own module imports ``pkg_resources`` (gone from setuptools >= 82), computes its language
list wrongly (over the feature axis) and loads its learned vectors as a pickle; so we read the same
bundled files with numpy, as its ``get_features`` does (file, source and feature prefix per set below),
and the learned vectors with an unpickler that rebuilds numpy arrays and nothing else.
"""

from __future__ import annotations

import difflib
import json
import pickle
import re
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from hql_ray.settings.errors import InputError

# Our name -> (file, source, feature prefix), as lang2vec's FEATURE_SETS_DICT names them
# (syntax_knn, phonology_knn, inventory_knn: WALS/SSWL/Ethnologue values completed by k-NN; geo).
FEATURE_SETS = {
    "fam": ("family_features.npz", "FAM", "F_"),
    "syntax": ("feature_predictions.npz", "predicted", "S_"),
    "phonology": ("feature_predictions.npz", "predicted", "P_"),
    "inventory": ("feature_predictions.npz", "predicted", "INV_"),
    "geo": ("geocoord_features.npz", "GEOCOORDS", "GC_"),
}
# The paper's display names for its 12 languages (language_files/12langs*.csv), by ISO 639-3 code.
PAPER_NAMES = {
    "deu": "German", "ltz": "Luxembourgish", "eng": "English", "tpi": "Tok_Pisin", "nld": "Dutch",
    "lim": "Limburgish", "ita": "Italian", "scn": "Sicilian", "spa": "Spanish", "ast": "Asturian",
    "fra": "French", "hat": "Haitian_Creole",
}
# FLORES individual languages whose family path URIEL keeps under the macrolanguage only.
FAMILY_FROM = {"lvs": "lav", "nno": "nor", "nob": "nor", "twi": "aka"}
CODE = re.compile(r"^(?P<iso>[A-Za-z]{2,3})(?P<script>_[A-Za-z]{4})?$")


@dataclass(frozen=True)
class UrielLanguage:
    code: str  # as the user wrote it (deu_Latn): the tree file's ``code``
    iso: str   # the ISO 639-3 code URIEL knows it by (deu)
    name: str  # display name (German)


def _data(name: str):
    from importlib.resources import files

    return files("lang2vec") / "data" / name


@lru_cache(maxsize=None)
def _npz(name: str) -> dict[str, np.ndarray]:
    with np.load(_data(name)) as db:  # plain arrays: no pickles
        return {key: db[key] for key in db.files}


@lru_cache(maxsize=None)
def _rows(name: str) -> dict[str, int]:
    """ISO code -> row of one file (each file orders its 7,970 languages its own way)."""
    return {str(code): i for i, code in enumerate(_npz(name)["langs"])}


def uriel_codes() -> dict[str, int]:
    """URIEL's ISO 639-3 codes (the same 7,970 in every feature file) -> row in the family file."""
    return _rows("family_features.npz")


@lru_cache(maxsize=1)
def _two_letter() -> dict[str, str]:
    return json.loads(_data("letter_codes.json").read_text(encoding="utf-8"))


def display_name(iso: str, script: str = "") -> str:
    """The paper's name for its languages; else the ISO 639-3 name (pycountry), as one word."""
    iso = _two_letter().get(iso, iso)
    if iso in PAPER_NAMES:
        return PAPER_NAMES[iso]
    import pycountry

    entry = pycountry.languages.get(alpha_3=iso)
    if entry is None:
        return iso + script
    plain = re.sub(r"\s*\(.*?\)", "", entry.name)  # "Modern Greek (1453-)" -> "Modern Greek"
    return re.sub(r"\W+", "_", plain).strip("_") or iso + script


def resolve(codes: list[str]) -> list[UrielLanguage]:
    """Each code (FLORES deu_Latn, ISO 639-3 deu, or ISO 639-1 de) as URIEL knows it; every unknown
    code in one error, each with its close matches."""
    known = uriel_codes()
    found, unknown = [], []
    for code in codes:
        match = CODE.match(code)
        iso = match["iso"].lower() if match else ""
        iso = _two_letter().get(iso, iso)
        if iso in known:
            found.append(UrielLanguage(code, iso, display_name(iso, match["script"] or "")))
        else:
            unknown.append(code)
    if unknown:
        raise InputError("--langs: " + "; ".join(_unknown(code) for code in unknown))
    names = [lang.name for lang in found]
    for i, lang in enumerate(found):  # zho_Hans and zho_Hant: Chinese_Hans, Chinese_Hant
        if names.count(lang.name) > 1:
            found[i] = UrielLanguage(lang.code, lang.iso, f"{lang.name}_{lang.code.rsplit('_', 1)[-1]}")
    return found


def _unknown(code: str) -> str:
    match = CODE.match(code)
    if not match:
        return f"{code!r} is not a language code (FLORES deu_Latn, or ISO 639-3 deu)"
    iso, script = match["iso"].lower(), match["script"] or ""
    hint = ", ".join(f"{c}{script} ({display_name(c)})" if display_name(c) != c else c + script
                     for c in close_codes(iso))
    return (f"unknown language {code!r}: URIEL has no ISO 639-3 code {iso!r}"
            + (f"; close matches: {hint}" if hint else ""))


def close_codes(iso: str, count: int = 5) -> list[str]:
    """URIEL codes spelled like ``iso``; among equally close ones, the better described languages first
    (more WALS values: deu before the extinct Dacian xdc for a mistyped dcu)."""
    described = _wals_values()
    scored = [(difflib.SequenceMatcher(None, iso, code).ratio(), described[row], code)
              for code, row in _rows("features.npz").items()]
    return [code for ratio, _, code in sorted(scored, reverse=True)[:count] if ratio >= 0.6]


@lru_cache(maxsize=1)
def _wals_values() -> np.ndarray:
    db = _npz("features.npz")
    return (db["data"][:, :, list(db["sources"]).index("WALS")] != -1).sum(axis=1)


def family_paths(isos: list[str]) -> dict[str, tuple[str, ...]]:
    """Each language's Glottolog families, the widest first (Indo_European, Germanic, ...); () if none."""
    db = _npz("family_features.npz")
    data, feats = db["data"][:, :, 0], db["feats"]
    sizes = _family_sizes()
    rows = uriel_codes()
    out = {}
    for iso in isos:
        row = data[rows[iso]]
        if not row.any() and iso in FAMILY_FROM:
            row = data[rows[FAMILY_FROM[iso]]]
        members = sorted(np.flatnonzero(row == 1), key=lambda f: (-sizes[f], f))  # a family before its branches
        out[iso] = tuple(family_name(str(feats[f])) for f in members)
    return out


@lru_cache(maxsize=1)
def _family_sizes() -> np.ndarray:
    return (_npz("family_features.npz")["data"][:, :, 0] == 1).sum(axis=0)


def family_name(feature: str) -> str:
    """F_Indo-European -> Indo_European (the paper's spelling; a valid node name)."""
    return re.sub(r"\W+", "_", feature.removeprefix("F_")).strip("_")


def vectors(isos: list[str], *sets: str) -> np.ndarray:
    """The named feature sets side by side, one row per language (URIEL's -1 = no value)."""
    parts = []
    for name in sets:
        file, source, prefix = FEATURE_SETS[name]
        db = _npz(file)
        columns = [i for i, f in enumerate(db["feats"]) if str(f).startswith(prefix)]
        src = list(db["sources"]).index(source)
        rows = [_rows(file)[iso] for iso in isos]
        parts.append(db["data"][rows][:, columns, src].astype(np.float64))
    return np.concatenate(parts, axis=1)


class _ArraysOnly(pickle.Unpickler):
    """lang2vec's learned.npy is a pickled dict of numpy arrays: rebuild those, refuse anything else."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"lang2vec learned.npy: refusing {module}.{name}")
        if module.startswith("numpy") and name == "_reconstruct":
            from numpy._core.multiarray import _reconstruct

            return _reconstruct
        return super().find_class(module, name)


@lru_cache(maxsize=1)
def learned_vectors() -> dict[str, np.ndarray]:
    """Malaviya et al. (2017)'s 512-d learned vectors by ISO code (about a thousand languages)."""
    with _data("learned.npy").open("rb") as fh:
        version = np.lib.format.read_magic(fh)
        np.lib.format.read_array_header_1_0(fh) if version == (1, 0) else np.lib.format.read_array_header_2_0(fh)
        table = _ArraysOnly(fh, encoding="latin1").load().item()  # a 0-d object array holding the dict
    return {str(k): np.asarray(v, dtype=np.float64) for k, v in table.items() if k != "langs"}  # "langs": the key list
