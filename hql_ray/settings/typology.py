"""Suggest a language tree from URIEL (through lang2vec's data): `hql-ray tree suggest --by MODE`.

``genetic`` follows the Glottolog families: a group is a family, named after it (a chain of families
holding the same languages is one group, named after the widest: Germanic, not West_Germanic). The
other modes cluster by distance (average linkage, scipy) and cut the dendrogram at each level: level k
of d has about n^(k/d) groups (1 at the root, n at the leaves; 12 languages, depth 3: 1, 2, 5, 12).
A group is named after a family when it is exactly that family's languages here, else after its most
central language (``syntax_German``); a one-language group after the language.

The suggestion is a starting point: it knows typology and geography, not how much data each language
has or which languages transfer well in AMR-to-text generation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from hql_ray.settings import uriel
from hql_ray.settings.clades import Clade, level_names, to_rows
from hql_ray.settings.errors import ConfigError, InputError
from hql_ray.settings.tree import TreeRow
from hql_ray.settings.uriel import UrielLanguage


@dataclass
class Suggestion:
    levels: list[str]
    rows: list[TreeRow]
    notes: list[str] = field(default_factory=list)


class Grouping:
    """One ``--by`` mode."""

    name = ""
    help = ""

    def suggest(self, langs: list[UrielLanguage], depth: int) -> Suggestion:
        raise NotImplementedError


class Genetic(Grouping):
    name = "genetic"
    help = "Glottolog families (URIEL's family features); groups named after the families"

    def suggest(self, langs: list[UrielLanguage], depth: int) -> Suggestion:
        paths = uriel.family_paths([lang.iso for lang in langs])
        notes = [f"{lang.code}: URIEL has no family for it; it is a group of its own under the root"
                 for lang in langs if not paths[lang.iso]]
        root = _family_clade(langs, paths, 0)
        if root.is_language:  # one language
            root = Clade(root.name, [root])
        levels, rows = to_rows(root, depth)
        return Suggestion(levels, rows, notes)


def _family_clade(langs: list[UrielLanguage], paths: dict[str, tuple[str, ...]], at: int) -> Clade:
    """The group of ``langs``, which share their first ``at`` families (and the one at ``at``, below the
    root): the families they all share from there on make one group, named after the widest, split by
    the next family that differs; a language with no family left is a leaf of the group."""
    if len(langs) == 1:
        return Clade(langs[0].name, code=langs[0].code)
    shared = at
    while all(len(paths[lang.iso]) > shared for lang in langs) and \
            len({paths[lang.iso][shared] for lang in langs}) == 1:
        shared += 1
    name = paths[langs[0].iso][at] if shared > at else "root"
    by_family: dict[str, list[UrielLanguage]] = {}
    alone = []
    for lang in langs:
        path = paths[lang.iso]
        (by_family.setdefault(path[shared], []) if len(path) > shared else alone).append(lang)
    children = [_family_clade(group, paths, shared) for group in by_family.values()]
    children += [Clade(lang.name, code=lang.code) for lang in alone]
    return Clade(name, children)


class ByDistance(Grouping):
    """Average-linkage clustering of a distance matrix, cut into levels."""

    def distances(self, langs: list[UrielLanguage]) -> tuple[np.ndarray, list[str]]:
        raise NotImplementedError

    def suggest(self, langs: list[UrielLanguage], depth: int) -> Suggestion:
        from scipy.cluster.hierarchy import fcluster, linkage
        from scipy.spatial.distance import squareform

        n = len(langs)
        if n == 1:
            return Genetic().suggest(langs, depth)  # nothing to cluster: the same one-language tree
        matrix, notes = self.distances(langs)
        tree = linkage(squareform(matrix, checks=False), method="average")
        cuts = [np.ones(n, dtype=int)]
        for k in range(1, depth):
            cuts.append(fcluster(tree, t=round(n ** (k / depth)), criterion="maxclust"))
        namer = _Namer(self.name, langs, matrix)
        rows = [TreeRow(lang.code, lang.name, tuple(namer.name(cut, i) for cut in cuts))
                for i, lang in enumerate(langs)]
        return Suggestion(level_names(depth), rows, notes)


class _Namer:
    """Names for clusters: the family that is exactly these languages here, else the most central one."""

    def __init__(self, mode: str, langs: list[UrielLanguage], matrix: np.ndarray):
        self.mode, self.langs, self.matrix = mode, langs, matrix
        self.paths = uriel.family_paths([lang.iso for lang in langs])
        self.names: dict[frozenset[int], str] = {}

    def name(self, cut: np.ndarray, i: int) -> str:
        members = frozenset(np.flatnonzero(cut == cut[i]).tolist())
        if members not in self.names:
            self.names[members] = self._unique(self._pick(sorted(members)))
        return self.names[members]

    def _pick(self, members: list[int]) -> str:
        if len(members) == 1:
            return self.langs[members[0]].name
        inside = [self.paths[self.langs[m].iso] for m in members]
        outside = [self.paths[lang.iso] for j, lang in enumerate(self.langs) if j not in members]
        for family in inside[0]:  # widest first
            if all(family in p for p in inside) and not any(family in p for p in outside):
                return family
        if not outside:
            return "root"
        central = min(members, key=lambda m: self.matrix[m, members].sum())
        return f"{self.mode}_{self.langs[central].name}"

    def _unique(self, name: str) -> str:
        taken, candidate, k = set(self.names.values()), name, 2
        while candidate in taken:
            candidate, k = f"{name}_{k}", k + 1
        return candidate


def cosine_distances(vectors: np.ndarray) -> np.ndarray:
    from scipy.spatial.distance import pdist, squareform

    matrix = squareform(pdist(vectors, metric="cosine"))
    return np.nan_to_num(matrix, nan=1.0)  # an all-zero vector is as far as can be


class Featural(ByDistance):
    """Cosine distance of URIEL feature vectors."""

    def __init__(self, name: str, sets: tuple[str, ...], help: str):
        self.name, self.sets, self.help = name, sets, help

    def distances(self, langs: list[UrielLanguage]) -> tuple[np.ndarray, list[str]]:
        values = uriel.vectors([lang.iso for lang in langs], *self.sets)
        known = (values != -1).all(axis=0)  # the k-NN sets are complete; drop a column any language lacks
        return cosine_distances(values[:, known]), []


class Learned(ByDistance):
    name = "learned"
    help = ("Malaviya et al. (2017)'s learned vectors (~1,000 languages); a language without one takes "
            "the mean of its closest Glottolog relatives that have one")

    def distances(self, langs: list[UrielLanguage]) -> tuple[np.ndarray, list[str]]:
        table = uriel.learned_vectors()
        rows, notes = [], []
        for lang in langs:
            if lang.iso in table:
                rows.append(table[lang.iso])
                continue
            relatives, family = _closest_with_vectors(lang.iso, table)
            if not relatives:
                raise InputError(f"--by learned: no learned vector for {lang.code}, nor for any language "
                                 f"of its family; use another --by")
            rows.append(np.mean([table[r] for r in relatives], axis=0))
            shown = ", ".join(relatives[:5]) + (f" and {len(relatives) - 5} more" if len(relatives) > 5 else "")
            notes.append(f"{lang.code}: no learned vector; the mean of {family}'s {shown}")
        return cosine_distances(np.array(rows)), notes


def _closest_with_vectors(iso: str, table: dict[str, np.ndarray]) -> tuple[list[str], str]:
    """The languages with a learned vector in ``iso``'s narrowest family that has any."""
    candidates = sorted(table)
    paths = uriel.family_paths([c for c in candidates if c in uriel.uriel_codes()] + [iso])
    own = paths[iso]
    for depth in range(len(own), 0, -1):
        found = [c for c, p in paths.items() if c != iso and p[:depth] == own[:depth]]
        if found:
            return found, own[depth - 1]
    return [], ""


class Mix(ByDistance):
    name = "mix"
    help = "the mean of the genetic, syntax, phonology and geo distances (each scaled to at most 1)"

    def distances(self, langs: list[UrielLanguage]) -> tuple[np.ndarray, list[str]]:
        parts = [genetic_distances(langs)] + [GROUPINGS[m].distances(langs)[0] for m in ("syntax", "phonology", "geo")]
        scaled = [part / part.max() if part.max() > 0 else part for part in parts]
        return np.mean(scaled, axis=0), []


def genetic_distances(langs: list[UrielLanguage]) -> np.ndarray:
    """1 - shared families / the longer family path (0: same path, 1: no family in common)."""
    paths = uriel.family_paths([lang.iso for lang in langs])
    sets = [set(paths[lang.iso]) for lang in langs]
    n = len(langs)
    out = np.ones((n, n))
    for i in range(n):
        for j in range(n):
            longest = max(len(sets[i]), len(sets[j]))
            out[i, j] = 0.0 if i == j else 1.0 - (len(sets[i] & sets[j]) / longest if longest else 0.0)
    return out


GROUPINGS: dict[str, Grouping] = {g.name: g for g in (
    Genetic(),
    Featural("syntax", ("syntax",), "word order and other syntactic features (WALS, SSWL, Ethnologue; k-NN completed)"),
    Featural("phonology", ("phonology", "inventory"), "phonological features and phoneme inventories (k-NN completed)"),
    Featural("geo", ("geo",), "where the languages are spoken (URIEL's distances to 299 points on the globe)"),
    Learned(),
    Mix(),
)}


def suggest(codes: list[str], by: str = "genetic", depth: int = 3,
            names: dict[str, str] | None = None) -> Suggestion:
    """A tree of ``depth`` group levels (level0 = the root) over ``codes``; ``names`` overrides
    display names by code (e.g. those of an existing tree file)."""
    if by not in GROUPINGS:
        raise ConfigError(f"--by {by!r}: choose one of {', '.join(GROUPINGS)}")
    if depth < 1:
        raise ConfigError(f"--depth {depth}: a tree needs at least the root level (1)")
    if not codes:
        raise ConfigError("--langs: no language codes given")
    duplicates = sorted({c for c in codes if codes.count(c) > 1})
    if duplicates:
        raise ConfigError(f"--langs: {', '.join(duplicates)} given twice")
    langs = uriel.resolve(codes)
    if names:
        langs = [UrielLanguage(lang.code, lang.iso, names.get(lang.code, lang.name)) for lang in langs]
    return GROUPINGS[by].suggest(langs, depth)
