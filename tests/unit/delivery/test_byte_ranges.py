"""Which part of an instance a request asks for, and whether the partner's copy is current (pure)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.delivery.byte_ranges import ByteRange, RangeNotSatisfiable, entity_tag, none_match, requested_range

TAG = entity_tag("ab" * 32)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("bytes=0-99", ByteRange(0, 99)),
        ("bytes=1000-", ByteRange(1000, 4999)),
        ("bytes=-16", ByteRange(4984, 4999)),
        ("bytes=-9999", ByteRange(0, 4999)),  # a suffix longer than the object: all of it
        ("bytes=4000-9999", ByteRange(4000, 4999)),  # an end past the object's: cut to it
        ("BYTES = 5 - 9", ByteRange(5, 9)),
        ("bytes=9-5", None),  # not a valid range: ignored
        ("bytes=0-9,20-29", None),  # several ranges: the whole object
        ("items=0-9", None),
        ("bytes=-", None),
        ("bytes=a-b", None),
    ],
)
def test_one_range_is_served_and_anything_else_means_the_whole_object(header: str, expected: ByteRange | None) -> None:
    assert requested_range(header, None, TAG, 5000) == expected


@pytest.mark.parametrize("header", ["bytes=5000-", "bytes=5000-6000", "bytes=-0"])
def test_a_range_past_the_end_is_not_satisfiable(header: str) -> None:
    with pytest.raises(RangeNotSatisfiable):
        requested_range(header, None, TAG, 5000)


def test_if_range_serves_the_range_only_for_this_object() -> None:
    assert requested_range("bytes=10-", TAG, TAG, 100) == ByteRange(10, 99)
    assert requested_range("bytes=10-", entity_tag("cd" * 32), TAG, 100) is None
    assert requested_range("bytes=10-", "W/" + TAG, TAG, 100) is None  # If-Range compares strongly
    assert requested_range("bytes=10-", "Tue, 01 Dec 2026 10:00:00 GMT", TAG, 100) is None
    assert requested_range(None, TAG, TAG, 100) is None


def test_if_none_match_names_this_object_among_others_or_any() -> None:
    assert none_match(TAG, TAG) and none_match(f'"x", {TAG}', TAG) and none_match("*", TAG)
    assert none_match("W/" + TAG, TAG)
    assert not none_match(None, TAG) and not none_match('"x"', TAG)


@given(st.integers(1, 10_000), st.integers(0, 20_000), st.integers(0, 20_000))
def test_a_served_range_lies_within_the_object_and_content_range_says_where(size: int, a: int, b: int) -> None:
    try:
        served = requested_range(f"bytes={a}-{b}", None, TAG, size)
    except RangeNotSatisfiable:
        assert a >= size
        return
    if served is None:
        assert b < a
        return
    assert 0 <= served.start == a <= served.end < size and served.length == min(b, size - 1) - a + 1
    assert served.content_range(size) == f"bytes {a}-{served.end}/{size}"
