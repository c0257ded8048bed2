"""A multipart/related answer's first part is written out byte for byte, however the stream is cut."""

from __future__ import annotations

import hashlib
from io import BytesIO

from hypothesis import given
from hypothesis import strategies as st

from services.gateway.fetch import _boundary, _FirstPart


@given(st.binary(max_size=3000), st.lists(st.integers(min_value=1, max_value=200), max_size=40))
def test_the_first_part_is_extracted_whatever_the_chunking(payload: bytes, cuts: list[int]) -> None:
    boundary = b"b0undary"
    stream = (
        b"--b0undary\r\nContent-Type: application/dicom\r\n\r\n"
        + payload
        + b"\r\n--b0undary\r\nContent-Type: application/dicom\r\n\r\nsecond\r\n--b0undary--\r\n"
    )
    out, digest = BytesIO(), hashlib.sha256()
    part = _FirstPart(boundary, out, digest)
    position = 0
    for cut in [*cuts, len(stream)]:
        part.feed(stream[position : position + cut])
        position += cut
    part.feed(stream[position:])
    assert part.done and out.getvalue() == payload and digest.hexdigest() == hashlib.sha256(payload).hexdigest()


def test_the_boundary_parameter_is_read_quoted_or_not() -> None:
    assert _boundary('multipart/related; type="application/dicom"; boundary="abc"') == b"abc"
    assert _boundary("multipart/related; boundary=xyz; type=application/dicom") == b"xyz"
    assert _boundary("multipart/related") is None


def test_an_answer_whose_boundary_never_comes_is_refused_after_a_bounded_head() -> None:
    """With a wrong boundary every byte of a 1 GiB answer was held in memory, waiting for it."""
    import pytest

    from services.gateway.fetch import PART_HEAD_LIMIT, FetchFailure

    part = _FirstPart(b"expected", BytesIO(), hashlib.sha256())
    part.feed(b"--other\r\nContent-Type: application/dicom\r\n\r\n")
    with pytest.raises(FetchFailure) as refused:
        for _ in range(PART_HEAD_LIMIT // 1000 + 2):
            part.feed(b"\0" * 1000)
    assert refused.value.detail == "multipart-unreadable" and refused.value.retryable
