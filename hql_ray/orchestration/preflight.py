"""Checks made before Ray starts or a model loads: every problem a user can fix, found before any node runs.

`check` returns each node's number of training examples (after the per-corpus cap), which the scheduler
uses as the node's work. What it checks, each failure an InputError/ConfigError naming the file (and line):

- the training corpora (data.corpora; by default the original's amr3 and flores, or every corpus of a
  folder without them) have every split for every language; folders that are not used are said once.
  data.corpora and eval.test_sets left to the data (None) are fixed on `cfg` here (`resolve_data`), so
  the run's record says what it trained on and scored, and a choice that is not the original's is said once;
- every graph of the files the run reads (train and validation of the training corpora, and the test sets
  in eval.test_sets) parses, as the node would parse it; the verdict of a file that passed is cached
  under the cache folder by size and mtime, so the next run does not parse it again;
- each node that trains gets validation rows (data.validation "first": validation_size // languages //
  corpora >= 1);
- each test set in eval.test_sets has rows for the languages that should have it: a corpus's test split
  (flores, amr3, or any corpus folder's) for every language, LDC2020T07 for deu/eng/ita/spa when the data
  folder has an ldc2020t07 folder; without one, LDC2020T07 is not scored and that is said once;
- the evaluation's files (metrics.check_eval_files: spBLEU and LID models, the -ge baseline): a given
  path that does not exist or load is an error, what will not be computed is said.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import asdict
from pathlib import Path

from hql_ray.data import corpus
from hql_ray.scoring import metrics
from hql_ray.settings.config import Config
from hql_ray.settings.handoffs import handoff_for
from hql_ray.settings.errors import ConfigError, InputError
from hql_ray.settings.tree import LanguageTree
from hql_ray.training.simulate import Simulation

log = logging.getLogger(__name__)
VERDICTS = "preflight-verdicts.json"  # under cfg.cache_dir


def check(cfg: Config, tree: LanguageTree, simulation: Simulation | None = None,
          skipped: set[str] | frozenset[str] = frozenset()) -> dict[str, int]:
    """Everything above; -> node id -> training examples. `skipped`: nodes this run does not train."""
    handoff_for(cfg)  # model.handoff names a mode, and one that fits model.mode
    if simulation is not None:
        return {node.id: sum(simulation.examples_of(lang.code) for lang in node.languages)
                for node in tree.nodes.values()}
    check_model(cfg)
    d = cfg.data
    used = corpus.check_layout(d.dir, tree.languages, d.corpora)
    resolve_data(cfg, used)
    unused = corpus.unused_corpora(d.dir, used)
    if unused:
        log.warning("data: training on %s; not used: %s (name them in data.corpora / --corpus to use them)",
                    ", ".join(used), ", ".join(unused))
    for name, folders in corpus.in_both_layouts(d.dir, used).items():
        log.warning("data: %s is laid out twice (%s); each file is read from %s first", name,
                    ", ".join(map(str, folders)), folders[0])
    _check_validation(cfg, tree, used, skipped)
    verdicts = Verdicts(cfg.cache_dir / VERDICTS, cfg)
    per_language = {}
    for lang in tree.languages:
        n = 0
        for name in used:
            for split in ("train", "validation"):
                rows = verdicts.rows(corpus.corpus_file(d.dir, name, lang.code, split), lang.code, name)
                if split == "train":
                    n += rows if d.max_train_per_corpus is None else min(rows, d.max_train_per_corpus)
        if n == 0:
            raise ConfigError(f"no training examples for {lang.code} ({lang.name}) in {d.dir} "
                              f"(corpora: {', '.join(used)})")
        per_language[lang.code] = n
    if cfg.eval.generate:
        check_test_sets(cfg, tree, verdicts)
        for note in metrics.check_eval_files(cfg):
            log.warning("%s", note)
    verdicts.save()
    return {node.id: sum(per_language[lang.code] for lang in node.languages) for node in tree.nodes.values()}


def resolve_data(cfg: Config, used: list[str]) -> None:
    """data.corpora and eval.test_sets left to the data folder (None) set to what it gives (`used`: the
    training corpora found); said once when that is not the original's choice."""
    d, ev = cfg.data, cfg.eval
    own = d.corpora is None and used != list(corpus.DEFAULT_CORPORA)
    if d.corpora is None:
        d.corpora = list(used)
    scored = ""
    if ev.test_sets is None:
        ev.test_sets = corpus.default_test_sets(d.dir, used)
        scored = f" and scoring their test splits ({', '.join(ev.test_sets)})" if ev.generate else ""
    if own:
        log.warning("data: no amr3 and flores corpora in %s: training on every corpus there (%s)%s; --corpus and "
                    "--test-sets choose others", d.dir, ", ".join(used), scored)


def _check_validation(cfg: Config, tree: LanguageTree, used: list[str], skipped) -> None:
    """data.validation "first": every node that trains gets at least one row per corpus and language."""
    if cfg.data.validation != "first":
        return
    for node in tree.nodes.values():
        if node.id in skipped:
            continue
        rows = cfg.data.validation_size // len(node.languages) // len(used)
        if rows < 1:
            raise ConfigError(
                f"data.validation_size (-ts) {cfg.data.validation_size} gives node {node.id} no validation row: "
                f"{len(node.languages)} languages x {len(used)} corpora need at least "
                f"{len(node.languages) * len(used)}")


def check_test_sets(cfg: Config, tree: LanguageTree, verdicts: "Verdicts | None" = None) -> None:
    """The test sets of eval.test_sets exist and hold rows for the languages that should have them."""
    d = cfg.data
    verdicts = verdicts or Verdicts(None, cfg)
    known = corpus.discover_corpora(d.dir)
    for test_set in corpus.test_sets_of(d.dir, d.corpora, cfg.eval.test_sets):
        if test_set == corpus.LDC:
            _check_ldc(cfg, tree, verdicts)
            continue
        if test_set not in known:
            here = corpus.sorted_test_sets(known + [corpus.LDC] * corpus.ldc_folder_exists(d.dir))
            raise InputError(f"eval.test_sets (--test-sets) names {test_set}, but it is no corpus here; the test "
                             f"sets here: {', '.join(here) or 'none'}", path=d.dir)
        for lang in tree.languages:
            path = corpus.corpus_file(d.dir, test_set, lang.code, "test")
            if not path.is_file():
                raise InputError(f"no {test_set} test split for {lang.code} ({lang.name}), and eval.test_sets "
                                 f"scores {test_set}", path=path)
            if verdicts.rows(path, lang.code, test_set) == 0:
                raise InputError(f"empty {test_set} test split for {lang.code} ({lang.name}): no rows", path=path)


def _check_ldc(cfg: Config, tree: LanguageTree, verdicts: "Verdicts") -> None:
    d = cfg.data
    wanted = [lang for lang in tree.languages if lang.code in corpus.LDC_LANGUAGES]
    if not wanted:
        return
    if not corpus.ldc_folder_exists(d.dir):
        log.warning("LDC2020T07 is not scored: no %s folder in %s (expected %s/%s/data/graph_amr/graph_amr-test.txt "
                    "and %s/%s/data/<code>/<code>-test.txt; LDC-licensed, never shipped)",
                    corpus.LDC, d.dir, d.dir, corpus.LDC, d.dir, corpus.LDC)
        return
    if corpus.ldc_dir(d.dir) is None:
        root = Path(d.dir) / corpus.LDC
        base = root / "data" if (root / "data").is_dir() else root
        raise InputError("no LDC2020T07 graph file, and eval.test_sets scores ldc2020t07",
                         path=base / "graph_amr" / "graph_amr-test.txt")
    for lang in wanted:
        pair = corpus.find_ldc(d.dir, lang.code)
        if pair is None:
            raise InputError(f"no LDC2020T07 sentences for {lang.code} ({lang.name}), and eval.test_sets scores "
                             "ldc2020t07", path=corpus.ldc_text_file(d.dir, lang.code))
        verdicts.ldc(pair, lang.code)


class Verdicts:
    """Parse each file once, as the node will (corpus.read_tsv / read_ldc), sharing the graphs' parses
    across languages; files that passed are remembered by (size, mtime) and the parse settings."""

    def __init__(self, path: Path | None, cfg: Config):
        self.path = path
        self.options = cfg.data.linearize
        self.skip_bad = cfg.data.skip_bad
        self.salt = hashlib.sha256(json.dumps(
            {"linearize": asdict(self.options), "skip_bad": self.skip_bad}, sort_keys=True).encode()).hexdigest()[:12]
        self.known: dict = {}
        if path is not None and path.is_file():
            try:
                self.known = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                self.known = {}
        self.changed = False
        self.amr_cache: dict = {}  # graph text -> linearized graph or its InputError, across every file
        self.ldc_cache: dict = {}

    def _stamp(self, paths: list[Path]) -> tuple[str, list]:
        stamps = [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in paths]
        return "|".join(s[0] for s in stamps) + "|" + self.salt, stamps

    def rows(self, path: Path, code: str, name: str) -> int:
        """Examples of one TSV file; a malformed line raises (file:line), unless data.skip_bad."""
        key, stamps = self._stamp([path])
        entry = self.known.get(key)
        if entry and entry["stamps"] == stamps:
            return entry["rows"]
        examples, _ = corpus.read_tsv(path, code, name, options=self.options, skip_bad=self.skip_bad,
                                      amr_cache=self.amr_cache)
        self._remember(key, stamps, len(examples))
        return len(examples)

    def ldc(self, pair: tuple[Path, Path], code: str) -> int:
        key, stamps = self._stamp(list(pair))
        entry = self.known.get(key)
        if entry and entry["stamps"] == stamps:
            return entry["rows"]
        rows = len(corpus.read_ldc(pair[0], pair[1], code, options=self.options, amr_cache=self.ldc_cache))
        if rows == 0:
            raise InputError(f"empty LDC2020T07 test set for {code}: no rows", path=pair[1])
        self._remember(key, stamps, rows)
        return rows

    def _remember(self, key: str, stamps: list, rows: int) -> None:
        self.known[key] = {"stamps": stamps, "rows": rows}
        self.changed = True

    def save(self) -> None:
        if self.path is None or not self.changed:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".verdicts-", dir=self.path.parent)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(self.known, fh)
            os.replace(tmp, self.path)
        except OSError as err:  # a read-only cache only costs the next run a parse
            log.info("preflight: cannot save verdicts to %s (%s)", self.path, err)


def check_model(cfg: Config) -> None:
    base = cfg.model.base
    looks_local = base.startswith((".", "/", "~")) or Path(base).exists()
    if base != "tiny" and looks_local and not Path(base).expanduser().is_dir():
        raise ConfigError(f"base model directory not found: {base}")
    if cfg.model.mode == "qlora":
        import importlib.util

        # Installed is enough here (importing it costs seconds: torch and its kernels); the workers import it.
        if importlib.util.find_spec("bitsandbytes") is None:
            raise ConfigError("-tm qlora needs bitsandbytes, which is not installed here; use -tm lora")
