"""Checks made before Ray starts or a model loads: every problem a user can fix, found in seconds.

Returns each node's number of training examples (after the per-language cap), which the scheduler
uses as the node's work.
"""

from __future__ import annotations

from pathlib import Path

from hql_ray import corpus
from hql_ray.config import Config
from hql_ray.errors import ConfigError
from hql_ray.tree import LanguageTree


def check(cfg: Config, tree: LanguageTree, simulate: dict | None = None) -> dict[str, int]:
    if simulate:
        return _simulated_sizes(tree, simulate)
    check_model(cfg)
    codes = [lang.code for lang in tree.languages]
    corpus.check_layout(cfg.data.dir, codes, cfg.data.corpora)
    cap = cfg.data.max_train_per_corpus
    per_language = {}
    for code in codes:
        n = corpus.count_examples(cfg.data.dir, code, "train", cfg.data.corpora)
        if n == 0:
            raise ConfigError(f"no training examples for {code} in {cfg.data.dir}")
        per_language[code] = min(n, cap) if cap else n
    return {node.id: sum(per_language[lang.code] for lang in node.languages) for node in tree.nodes.values()}


def check_model(cfg: Config) -> None:
    base = cfg.model.base
    looks_local = base.startswith((".", "/", "~")) or Path(base).exists()
    if base != "tiny" and looks_local and not Path(base).expanduser().is_dir():
        raise ConfigError(f"base model directory not found: {base}")
    if cfg.model.mode == "qlora":
        try:
            import bitsandbytes  # noqa: F401
        except Exception as err:  # noqa: BLE001 - any import failure means: no 4-bit here
            raise ConfigError(f"-tm qlora needs bitsandbytes, which cannot be imported here ({err}); use -tm lora")
    if cfg.model.mode == "fft" and cfg.model.handoff != "stack":
        # fft hands full weights to children; the adapter hand-off modes do not apply.
        raise ConfigError("model.handoff applies to lora/qlora; with -tm fft leave it at its default (stack)")


def _simulated_sizes(tree: LanguageTree, simulate: dict) -> dict[str, int]:
    per_language = simulate.get("examples_per_language", {})
    default = int(simulate.get("examples", 31000))
    return {
        node.id: sum(int(per_language.get(lang.code, default)) for lang in node.languages)
        for node in tree.nodes.values()
    }
