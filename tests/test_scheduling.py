"""Worker allocation: spare slots go to the biggest nodes, nothing is over-split."""

from __future__ import annotations

import pytest

from hql_ray.orchestration.scheduling import allocate_workers, lower_bound, max_useful_workers


def test_root_gets_every_slot():
    assert allocate_workers([("root", 372000)], 8) == {"root": 8}


def test_two_children_split_evenly():
    assert allocate_workers([("a", 186000), ("b", 186000)], 8) == {"a": 4, "b": 4}


def test_six_nodes_on_eight_slots_use_them_all():
    alloc = allocate_workers([(f"n{i}", 62000) for i in range(6)], 8)
    assert sum(alloc.values()) == 8 and sorted(alloc.values()) == [1, 1, 1, 1, 2, 2]


def test_more_nodes_than_slots_biggest_first():
    alloc = allocate_workers([("small", 100), ("big", 5000), ("mid", 1000)], 2)
    assert alloc == {"big": 1, "mid": 1}


def test_small_nodes_are_not_over_split():
    assert max_useful_workers(100, 8, 64) == 1
    assert allocate_workers([("tiny", 130)], 8, min_examples_per_worker=64) == {"tiny": 2}


def test_no_free_slots():
    assert allocate_workers([("a", 10)], 0) == {}


def test_lower_bound_pthql_shape():
    # 1 root, 2 children, 4 leaves: every language has 1 unit of work.
    parents = {"r": None, "a": "r", "b": "r", "a1": "a", "a2": "a", "b1": "b", "b2": "b"}
    work = {"r": 4, "a": 2, "b": 2, "a1": 1, "a2": 1, "b1": 1, "b2": 1}
    assert lower_bound(work, parents, 4) == 3.0  # total 12 / 4 slots
    assert lower_bound(work, parents, 100) == pytest.approx(0.12)  # total / slots still dominates
    # One worker per node at most: the critical path (4 + 2 + 1) dominates.
    assert lower_bound(work, parents, 100, max_per_node=1) == 7.0
