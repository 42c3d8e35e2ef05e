"""Checks that ids tell nothing of how many rows were made (tenants.ids)."""

from __future__ import annotations

import itertools

# Two random ids among 1 … 2**53 are this close with probability 2**-36 (the few hundred
# rows of a test world stay below 1e-6 together); sequential ids always are.
CLOSE = 2**16


def assert_ids_are_far_apart(ids: list[int]) -> None:
    assert len(set(ids)) == len(ids)
    closest = min(abs(a - b) for a, b in itertools.combinations(ids, 2))
    assert closest > CLOSE, f"two ids are {closest} apart: they count the rows between them"


def assert_ids_reveal_no_volume(ids_in_creation_order: list[int]) -> None:
    """Made one after another, the ids are in no order and none is close to another. (Twelve
    random ids come out sorted with probability 2 / 12!, about 4e-9.)"""
    assert ids_in_creation_order != sorted(ids_in_creation_order), "ids grow as rows are made"
    assert ids_in_creation_order != sorted(ids_in_creation_order, reverse=True)
    assert_ids_are_far_apart(ids_in_creation_order)
