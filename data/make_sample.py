"""Deterministic synthetic AMR-to-text corpus in the 12 HQL languages, for the demo and the tests.

WHY: the real corpora (AMR 3.0 translations, LDC2020T07) are licensed and never shipped, yet the demo
and the tests need data in every language of the trees, laid out exactly like the original's
(`<corpus>/<code>/<corpus>_<code>_<split>.tsv`, `<single-line PENMAN>\t<sentence>`). The graphs come
from a few templates (transitive, want-01 with a re-entrant agent, `:polarity -`, `:location`, `:mod`,
`:mode interrogative`, names with `:wiki`); each language realises them with its own small lexicon and
word order, consistently, so that a tiny byte-level model can learn the mapping. Like the original
`amr3` corpus, the data is parallel: every language gets the same graphs in the same split.

`python data/make_sample.py data/sample` regenerates the committed sample byte for byte.
"""

from __future__ import annotations

import argparse
import random
import sys
from dataclasses import dataclass
from pathlib import Path

import penman

from hql_ray.data.corpus import SPLITS
from hql_ray.settings.errors import InputError
from sample_lexicon import (
    ADJS, ANIMATE, CITIES, COLOURS, HUMAN_ONLY, HUMANS, INTRANSITIVE, NOUNS, OBJECTS, PERSONS, PLACES, VERBS,
)

LANGUAGES: dict[str, str] = {
    "ast_Latn": "Asturian", "deu_Latn": "German", "eng_Latn": "English", "fra_Latn": "French",
    "hat_Latn": "Haitian_Creole", "ita_Latn": "Italian", "lim_Latn": "Limburgish",
    "ltz_Latn": "Luxembourgish", "nld_Latn": "Dutch", "scn_Latn": "Sicilian", "spa_Latn": "Spanish",
    "tpi_Latn": "Tok_Pisin",
}
DEFAULT_SIZES: dict[str, tuple[int, int, int]] = {"amr3": (240, 30, 30), "flores": (40, 10, 10)}
DEFAULT_LDC = 10  # graphs of the LDC2020T07-like test pair that `python data/make_sample.py` writes
LDC_CODES = ("deu_Latn", "eng_Latn", "ita_Latn", "spa_Latn")  # the languages LDC2020T07 has


@dataclass(frozen=True)
class NP:
    """A noun phrase: a common noun (with an optional adjective), a person's name or a city."""

    kind: str  # "noun" | "person" | "city"
    key: str  # concept ("boy"), name ("Maria") or English city name ("Rome")
    adj: str | None = None


@dataclass(frozen=True)
class Clause:
    """One sentence's meaning; both the AMR and the 12 sentences are rendered from it."""

    verb: str
    agent: NP
    obj: NP | None = None
    loc: NP | None = None
    neg: bool = False
    question: bool = False
    want: bool = False


# ---------------------------------------------------------------- AMR
def _np_amr(np: NP, new) -> tuple[str, str]:
    if np.kind == "noun":
        v = new(np.key)
        mod = f" :mod ({new(np.adj)} / {np.adj})" if np.adj else ""
        return v, f"({v} / {np.key}{mod})"
    v = new(np.kind)
    wiki = f' :wiki "{np.key}"' if np.kind == "city" else ""
    return v, f'({v} / {np.kind}{wiki} :name ({new("name")} / name :op1 "{np.key}"))'


def clause_amr(c: Clause) -> str:
    """The clause as one line of PENMAN in the original's format (variables kept, AMR-style names)."""
    used: dict[str, int] = {}

    def new(concept: str) -> str:
        used[concept[0]] = used.get(concept[0], 0) + 1
        return concept[0] + (str(used[concept[0]]) if used[concept[0]] > 1 else "")

    root = new("want-01") if c.want else ""
    verb_var = new(c.verb) if not c.want else ""
    agent_var, agent = _np_amr(c.agent, new)
    if c.want:
        verb_var = new(c.verb)
    args = ""
    if c.obj:
        args += " :ARG1 " + _np_amr(c.obj, new)[1]
    if c.loc:
        args += " :location " + _np_amr(c.loc, new)[1]
    tail = (" :polarity -" if c.neg else "") + (" :mode interrogative" if c.question else "")
    if c.want:
        return f"({root} / want-01 :ARG0 {agent} :ARG1 ({verb_var} / {c.verb} :ARG0 {agent_var}{args}){tail})"
    return f"({verb_var} / {c.verb} :ARG0 {agent}{args}{tail})"


# ---------------------------------------------------------------- sentences
def _cap(s: str) -> str:
    if s.startswith("'t "):
        return "'t " + _cap(s[3:])
    for i, ch in enumerate(s):
        if ch.isalpha():
            return s[:i] + ch.upper() + s[i + 1:]
    return s


def _join(*parts: str) -> str:
    """Join words, gluing after an elided article (d', l', nell')."""
    out = ""
    for p in parts:
        if p:
            out += p if (not out or (out.endswith("'") and not out.endswith(" 't"))) else " " + p
    return out


def _name(lang: str, np: NP) -> str:
    return CITIES[np.key][lang] if np.kind == "city" else np.key


def _split_tag(cell: str) -> tuple[str, str]:
    word, _, tag = cell.partition(":")
    return word, tag


_GERM = {  # articles nom/acc by gender, location phrase by gender, city preposition, negation, "wants"
    "deu": ({"m": "der", "f": "die", "n": "das"}, {"m": "den", "f": "die", "n": "das"},
            {"m": "im", "f": "in der", "n": "im"}, "in", "nicht", "will"),
    "ltz": ({"m": "de", "f": "d'", "n": "d'"}, {"m": "de", "f": "d'", "n": "d'"},
            {"m": "am", "f": "an der", "n": "am"}, "zu", "net", "wëll"),
    "lim": ({"m": "de", "f": "de", "n": "'t"}, {"m": "de", "f": "de", "n": "'t"},
            {"m": "in de", "f": "in de", "n": "in 't"}, "in", "neet", "wilt"),
    "nld": ({"m": "de", "f": "de", "n": "het"}, {"m": "de", "f": "de", "n": "het"},
            {"m": "in de", "f": "in de", "n": "in het"}, "in", "niet", "wil"),
}


def _np_germanic(lang: str, np: NP | None, case: int) -> str:
    """case: 0 nominative, 1 accusative, 2 location phrase."""
    if np is None:
        return ""
    if np.kind != "noun":
        return (_GERM[lang][3] + " " if case == 2 else "") + _name(lang, np)
    word, g = _split_tag(NOUNS[np.key][lang])
    if case == 2:
        return f"{_GERM[lang][2][g]} {word}"
    art = _GERM[lang][case][g]
    if lang == "ltz" and art == "de" and word[0].lower() in "aeiouäëéndtzh":
        art = "den"  # the Luxembourgish n-rule
    if not np.adj:
        return _join(art, word)
    adj = ADJS[np.adj][lang]
    if lang == "deu":
        adj += "en" if (case == 1 and g == "m") else "e"
    elif lang == "ltz":
        art = {"m": "de", "f": "déi", "n": "dat"}[g]
        adj += {"m": "e", "f": "", "n": "" if adj.endswith("t") else "t"}[g]
    return f"{art} {adj} {word}"


def _germanic(lang: str, c: Clause) -> str:
    """V2 clause: finite verb second (first in questions), negation after the object, infinitive last."""
    finite, inf = VERBS[c.verb][lang].split("/")
    if c.want:
        finite = _GERM[lang][5]
    else:
        inf = ""
    subj = _np_germanic(lang, c.agent, 0)
    rest = _join(_np_germanic(lang, c.obj, 1), _GERM[lang][4] if c.neg else "",
                 _np_germanic(lang, c.loc, 2), inf)
    if c.question:
        return _cap(_join(finite, subj, rest)) + "?"
    return _cap(_join(subj, finite, rest)) + "."


def _english(c: Clause) -> str:
    def np(x: NP | None) -> str:
        if x is None or x.kind != "noun":
            return _name("eng", x) if x else ""
        return _join("the", ADJS[x.adj]["eng"] if x.adj else "", NOUNS[x.key]["eng"])

    third, base = VERBS[c.verb]["eng"].split("/")
    loc = _join("in", np(c.loc)) if c.loc else ""
    if c.want:
        third, base = "wants to " + base, "want to " + base
    if c.question:
        return _cap(_join("does", np(c.agent), base, np(c.obj), loc)) + "?"
    return _cap(_join(np(c.agent), "does not " + base if c.neg else third, np(c.obj), loc)) + "."


def _tok_pisin(c: Clause) -> str:
    def np(x: NP | None) -> str:
        if x is None or x.kind != "noun":
            return _name("tpi", x) if x else ""
        return _join(ADJS[x.adj]["tpi"] if x.adj else "", NOUNS[x.key]["tpi"])

    loc = _join("long", np(c.loc)) if c.loc else ""
    s = _join(np(c.agent), "i", "no" if c.neg else "", "laik" if c.want else "", VERBS[c.verb]["tpi"],
              np(c.obj), loc)
    return _cap(s) + ("?" if c.question else ".")


def _haitian(c: Clause) -> str:
    def np(x: NP | None) -> str:
        if x is None or x.kind != "noun":
            return _name("hat", x) if x else ""
        word, det = _split_tag(NOUNS[x.key]["hat"])
        pre = post = ""
        if x.adj:
            a = ADJS[x.adj]["hat"]
            if a.startswith("<"):
                pre = a[1:]
            else:
                post, det = _split_tag(a)
        return _join(pre, word, post, det)

    loc = _join("nan", np(c.loc)) if c.loc else ""
    s = _join(np(c.agent), "pa" if c.neg else "", "vle" if c.want else "", VERBS[c.verb]["hat"],
              np(c.obj), loc)
    return _cap(_join("èske" if c.question else "", s)) + ("?" if c.question else ".")


_ROM = {  # articles m/f, elision before a vowel, "in"+article (m, f, elided), city prep, negation, wants
    "fra": ("le", "la", True, None, "à", "ne", "veut"),
    "ita": ("il", "la", True, ("nel", "nella", "nell'"), "a", "non", "vuole"),
    "scn": ("u", "a", True, ("ntô", "ntâ", "nta l'"), "a", "nun", "voli"),
    "spa": ("el", "la", False, None, "en", "no", "quiere"),
    "ast": ("el", "la", True, ("nel", "na", None), "en", "nun", "quier"),
}
_VOWELS = tuple("aeiouhàâéèêìíòóùú")


def _np_romance(lang: str, np: NP | None, role: str) -> str:
    """role: "subj", "obj" (personal `a` for animates in spa/ast) or "loc" (preposition + article)."""
    if np is None:
        return ""
    m_art, f_art, elide, contract, city, _, _ = _ROM[lang]
    personal = role == "obj" and lang in ("spa", "ast") and (np.kind == "person" or np.key in ANIMATE)
    if np.kind != "noun":
        return _join(city if role == "loc" else "a" if personal else "", _name(lang, np))
    word, g = _split_tag(NOUNS[np.key][lang])
    words = [word]
    if np.adj:
        masc, _, fem = ADJS[np.adj][lang].partition("/")
        adj = masc if g == "m" else fem
        words = [adj[1:], word] if adj.startswith("<") else [word, adj]
    art = m_art if g == "m" else f_art
    elided = elide and words[0].startswith(_VOWELS)
    if elided:
        art = "l'"
    if role == "loc":
        if contract:
            art = contract[2 if elided and contract[2] else (0 if g == "m" else 1)]
        else:
            art = _join("dans" if lang == "fra" else "en", art)
    elif personal:
        art = "al" if art == "el" else _join("a", art)
    return _join(art, *words)


def _romance(lang: str, c: Clause) -> str:
    """SVO; negation before the finite verb (French ne ... pas); `want` + infinitive."""
    _, _, _, _, _, neg, want = _ROM[lang]
    finite, inf = VERBS[c.verb][lang].split("/")
    if c.want:
        finite = want
    else:
        inf = ""
    if c.neg and lang == "fra":
        verb = _join("n'" if finite.startswith(_VOWELS) else "ne", finite, "pas", inf)
    else:
        verb = _join(neg if c.neg else "", finite, inf)
    s = _join(_np_romance(lang, c.agent, "subj"), verb, _np_romance(lang, c.obj, "obj"),
              _np_romance(lang, c.loc, "loc"))
    if not c.question:
        return _cap(s) + "."
    if lang == "fra":
        return _cap(_join("est-ce qu'" if s.lower().startswith(_VOWELS) else "est-ce que", s)) + " ?"
    return _cap(("¿" if lang in ("spa", "ast") else "") + s) + "?"


def realize(code: str, c: Clause) -> str:
    """The clause as a sentence in language `code` (a FLORES code such as `deu_Latn`)."""
    lang = code.split("_")[0]
    if lang == "eng":
        return _english(c)
    if lang == "tpi":
        return _tok_pisin(c)
    if lang == "hat":
        return _haitian(c)
    if lang in _GERM:
        return _germanic(lang, c)
    return _romance(lang, c)


# ---------------------------------------------------------------- sampling
def _noun(rng: random.Random, pool: tuple[str, ...], adj: bool = False) -> NP:
    key = rng.choice(pool)
    if not adj or key == "water":
        return NP("noun", key)
    return NP("noun", key, rng.choice(("big", "small") + (COLOURS if key not in HUMANS else ())))


def _agent(rng: random.Random, verb: str, p_person: float, adj: bool = False) -> NP:
    if rng.random() < p_person:
        return NP("person", rng.choice(PERSONS))
    return _noun(rng, HUMANS if verb in HUMAN_ONLY else ANIMATE, adj)


def _modes(rng: random.Random, c: Clause, choices: tuple[str, ...]) -> Clause:
    mode = rng.choice(choices)
    return Clause(c.verb, c.agent, c.obj, c.loc, neg=mode == "neg", question=mode == "question",
                  want=mode == "want")


def _amr3_clause(rng: random.Random) -> Clause:
    """General templates: transitive (maybe an adjective) or intransitive with a place (maybe a city)."""
    verb = rng.choice(tuple(OBJECTS) + INTRANSITIVE)
    adj_on_obj = rng.random() < 0.3
    if verb in OBJECTS:
        agent = _agent(rng, verb, 0.2, adj=not adj_on_obj and rng.random() < 0.15)
        if verb == "see-01" and rng.random() < 0.15:
            obj = NP("person", rng.choice(PERSONS))
        else:
            obj = _noun(rng, OBJECTS[verb], adj=adj_on_obj)
        c = Clause(verb, agent, obj)
    else:
        agent = _agent(rng, verb, 0.2, adj=adj_on_obj)
        place = NP("city", rng.choice(tuple(CITIES))) if rng.random() < 0.25 else _noun(rng, PLACES)
        c = Clause(verb, agent, loc=place)
    return _modes(rng, c, ("plain", "plain", "neg", "question", "want"))


def _flores_clause(rng: random.Random) -> Clause:
    """Named-entity templates (FLORES is news-like): people and cities with :wiki."""
    verb = rng.choice(("live-01", "visit-01", "work-01"))
    agent = _agent(rng, verb, 0.6)
    city = NP("city", rng.choice(tuple(CITIES)))
    c = Clause(verb, agent, obj=city) if verb == "visit-01" else Clause(verb, agent, loc=city)
    return _modes(rng, c, ("plain", "neg", "question", "want"))


def _pool(rng: random.Random, make, n: int, exclude: set[str]) -> list[tuple[str, Clause]]:
    """n clauses with distinct AMRs (none in `exclude`), in the order the seeded RNG drew them."""
    out: list[tuple[str, Clause]] = []
    seen = set(exclude)
    misses = 0
    while len(out) < n and misses < 5000:  # 5000 repeats in a row: the templates are exhausted
        c = make(rng)
        amr = clause_amr(c)
        misses += 1
        if amr not in seen:
            seen.add(amr)
            out.append((amr, c))
            misses = 0
    if len(out) < n:
        raise InputError(f"cannot make {n} distinct sample graphs (got {len(out)}); ask for fewer")
    return out


_README = """# Sample corpus (synthetic)

Synthetic AMR-to-text data in the 12 HQL languages, generated by
`python data/make_sample.py data/sample` (seed {seed}) from a few AMR templates and small
hand-written per-language lexicons; no external data is used, and the sentences are deliberately
simple (plausible, not always grammatical).
The graphs are the same in every language (parallel, like the original `amr3` corpus); train,
validation and test hold different graphs. Sizes per language: `amr3` {amr3}, `flores` {flores}
(train/validation/test).{ldc} Do not edit by hand: the tests regenerate it and compare byte for byte.
Licence: the same as the project (Apache-2.0).
"""


def write_sample(out_dir: str | Path, n_train: int = 240, n_validation: int = 30, n_test: int = 30,
                 seed: int = 0, n_flores_train: int = 40, n_flores_validation: int = 10,
                 n_flores_test: int = 10, n_ldc: int = 0) -> dict:
    """Write both corpora for all 12 languages under out_dir; returns a summary (counts, files, bytes).

    `n_ldc` > 0 also writes a test pair shaped like LDC2020T07 (ldc2020t07/graph_amr/graph_amr-test.txt,
    one graph a line, and ldc2020t07/<code>/<code>-test.txt for deu, eng, ita, spa), graphs of its own."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError("output path exists and is not a folder", path=out)
    sizes = {"amr3": (n_train, n_validation, n_test),
             "flores": (n_flores_train, n_flores_validation, n_flores_test)}
    if n_ldc < 0 or any(n < 0 for ns in sizes.values() for n in ns):
        raise InputError(f"sample sizes must be >= 0, got {sizes}")
    rng = random.Random(seed)
    amr3 = _pool(rng, _amr3_clause, sum(sizes["amr3"]), set())
    flores = _pool(rng, _flores_clause, sum(sizes["flores"]), {a for a, _ in amr3})
    files: dict[str, int] = {}
    for corpus, pool in (("amr3", amr3), ("flores", flores)):
        bounds = [0, sizes[corpus][0], sum(sizes[corpus][:2]), sum(sizes[corpus])]
        for code in LANGUAGES:
            folder = out / corpus / code
            folder.mkdir(parents=True, exist_ok=True)
            for i, split in enumerate(SPLITS):
                rows = pool[bounds[i]:bounds[i + 1]]
                data = "".join(f"{amr}\t{realize(code, c)}\n" for amr, c in rows).encode("utf-8")
                name = f"{corpus}_{code}_{split}.tsv"
                (folder / name).write_bytes(data)
                files[f"{corpus}/{code}/{name}"] = len(data)
    if n_ldc:  # drawn last: the corpora above are the same with or without it
        ldc = _pool(rng, _amr3_clause, n_ldc, {a for a, _ in amr3 + flores})
        files.update(_write_ldc(out, ldc))
    note = (f" Plus a test pair shaped like LDC2020T07, {n_ldc} graphs of its own in deu, eng, ita, spa "
            "(`ldc2020t07/`).") if n_ldc else ""
    readme = _README.format(seed=seed, amr3="/".join(map(str, sizes["amr3"])),
                            flores="/".join(map(str, sizes["flores"])), ldc=note).encode("utf-8")
    (out / "README.md").write_bytes(readme)
    files["README.md"] = len(readme)
    return {"out_dir": str(out), "seed": seed, "languages": list(LANGUAGES),
            "corpora": {k: dict(zip(SPLITS, v)) for k, v in sizes.items()},
            "files": files, "bytes": sum(files.values())}


def _write_ldc(out: Path, pool: list[tuple[str, Clause]]) -> dict[str, int]:
    files = {}
    for name, lines in [("graph_amr", [amr for amr, _ in pool])] + [
            (code, [realize(code, c) for _, c in pool]) for code in LDC_CODES]:
        path = out / "ldc2020t07" / name / f"{name}-test.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        data = "".join(f"{line}\n" for line in lines).encode("utf-8")
        path.write_bytes(data)
        files[path.relative_to(out).as_posix()] = len(data)
    return files


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python data/make_sample.py", description=__doc__.split("\n")[0])
    p.add_argument("out_dir", help="folder to write (e.g. data/sample)")
    p.add_argument("--seed", type=int, default=0)
    for corpus, (tr, va, te) in DEFAULT_SIZES.items():
        pre = "" if corpus == "amr3" else "flores-"
        p.add_argument(f"--{pre}train", type=int, default=tr)
        p.add_argument(f"--{pre}validation", type=int, default=va)
        p.add_argument(f"--{pre}test", type=int, default=te)
    p.add_argument("--ldc", type=int, default=DEFAULT_LDC, help="graphs of the LDC2020T07-like test pair (0: none)")
    a = p.parse_args(argv)
    try:
        s = write_sample(a.out_dir, a.train, a.validation, a.test, a.seed,
                         a.flores_train, a.flores_validation, a.flores_test, n_ldc=a.ldc)
    except InputError as e:
        print(e.format(), file=sys.stderr)
        return 2
    print(f"wrote {len(s['files'])} files, {s['bytes']} bytes, under {s['out_dir']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
