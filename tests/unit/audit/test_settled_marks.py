"""SettledMarks: which study marks a batch may skip claiming from the store, and which it counts."""

from __future__ import annotations

from services.audit.counters import SettledMarks


def test_unknown_marks_are_claimed_and_settled_ones_counted_only_by_their_owner() -> None:
    settled = SettledMarks()
    settled.add({"st:a": "b1", "st:b": "b2"})
    assert settled.split("b1", ["st:a", "st:b", "st:c"]) == (["st:c"], {"st:a"})
    assert settled.split("b3", ["st:a", "st:b"]) == ([], set())


def test_past_its_limit_the_oldest_marks_are_claimed_again() -> None:
    settled = SettledMarks(limit=2)
    settled.add({"st:a": "b1"})
    settled.add({"st:b": "b1", "st:c": "b1"})
    assert settled.split("b2", ["st:a", "st:b", "st:c"]) == (["st:a"], set())
