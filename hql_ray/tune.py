"""Per-level hyper-parameter search with Ray Tune (placeholder: no level is searched yet)."""

from __future__ import annotations


def searches_level(cfg, level: str) -> bool:
    return False


def search_node(cfg, payload, workers, refs, name, slots, storage, board) -> dict:
    raise NotImplementedError
