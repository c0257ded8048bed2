"""Reading STOW-RS bodies: good ones in any chunking, bad ones as typed errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.common.dicom.part10 import zero_preamble
from services.ingest.multipart_related import (
    MalformedMultipart,
    Part,
    RelatedPartsReader,
    SpillFile,
    UnsupportedMediaType,
    boundary_of,
    discard,
)
from services.ingest.received_files import ReceivedFiles
from tests.unit.ingest.samples import BOUNDARY, multipart_body, stow_content_type


def read(body: bytes, chunk: int = 1 << 16, limit: int = 1 << 20) -> list[Part]:
    reader = RelatedPartsReader(BOUNDARY.encode(), limit)
    parts: list[Part] = []
    for i in range(0, len(body), chunk):
        parts += reader.feed(body[i : i + chunk])
    return parts + reader.close()


def test_boundary_of_a_stow_request() -> None:
    assert boundary_of(stow_content_type()) == BOUNDARY.encode()
    assert boundary_of('Multipart/Related; boundary="quoted b"; type=application/dicom') == b"quoted b"


def test_the_type_parameter_may_be_left_out() -> None:
    assert boundary_of("multipart/related; boundary=abc") == b"abc"


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "",
        "application/dicom",
        "multipart/form-data; boundary=x",
        "application/json",
        'multipart/related; type="application/dicom+json"; boundary=x',
    ],
)
def test_other_media_types_are_unsupported(content_type: str | None) -> None:
    with pytest.raises(UnsupportedMediaType):
        boundary_of(content_type)


def test_a_related_type_without_boundary_is_malformed() -> None:
    with pytest.raises(MalformedMultipart):
        boundary_of('multipart/related; type="application/dicom"')


@given(parts=st.lists(st.binary(max_size=300), min_size=1, max_size=4), chunk=st.integers(1, 64))
def test_parts_come_out_as_they_went_in_whatever_the_chunking(parts: list[bytes], chunk: int) -> None:
    read_parts = read(multipart_body(parts), chunk=chunk)
    assert [p.data for p in read_parts] == parts
    assert [p.index for p in read_parts] == list(range(len(parts)))
    assert all(p.content_type == "application/dicom" and not p.too_large for p in read_parts)


def test_each_part_is_handed_out_as_soon_as_it_is_complete() -> None:
    body = multipart_body([b"first", b"second"])
    reader = RelatedPartsReader(BOUNDARY.encode(), 1000)
    split = body.index(b"--" + BOUNDARY.encode(), 10) + 2 + len(BOUNDARY) + 2
    assert [p.data for p in reader.feed(body[:split])] == [b"first"]
    assert [p.data for p in reader.feed(body[split:]) + reader.close()] == [b"second"]


def test_a_part_over_the_limit_is_counted_but_not_kept() -> None:
    [small, big] = read(multipart_body([b"x" * 10, b"y" * 5000]), chunk=100, limit=1000)
    assert small.data == b"x" * 10 and not small.too_large
    assert big.too_large and big.data == b"" and big.size == 5000


def test_part_content_type_is_reported_without_parameters() -> None:
    [part] = read(multipart_body([b"abc"], content_type='Application/DICOM; transfer-syntax="1.2.840.10008.1.2.1"'))
    assert part.content_type == "application/dicom"


@pytest.mark.parametrize(
    "body",
    [
        b"",  # nothing at all
        b"not multipart at all",
        multipart_body([b"abc"])[:-12],  # cut before the closing boundary
        f"--{BOUNDARY}--\r\n".encode(),  # no parts
        multipart_body([b"abc"], boundary="another-boundary"),
    ],
    ids=["empty", "garbage", "truncated", "no-parts", "wrong-boundary"],
)
def test_malformed_bodies_are_typed_errors_without_body_bytes(body: bytes) -> None:
    with pytest.raises(MalformedMultipart) as caught:
        read(body)
    assert b"abc" not in str(caught.value).encode()


def test_a_parts_preamble_is_zeroed_by_the_parser_so_acceptance_copies_nothing() -> None:
    """A sender's preamble (CVE-2019-11687: an executable header) is never passed on; zeroed after the
    parser had made the part's bytes, it took a third copy of each part (up to 1 GiB) in memory."""
    instance = b"MZ" + b"\x90" * 126 + b"DICM" + b"\x02\x00\x00\x00" + b"rest of the file"
    (part,) = read(multipart_body([instance]))
    assert part.data == bytes(128) + instance[128:]
    assert zero_preamble(part.data) is part.data, "nothing left to zero: no copy"


def test_zeroing_a_buffer_changes_it_in_place() -> None:
    buffer = bytearray(b"\xff" * 128 + b"DICM" + b"data")
    assert zero_preamble(buffer) is buffer and buffer == bytearray(128) + b"DICMdata"


def _spilling_reader(tmp_path: Path, limit: int = 1 << 20) -> RelatedPartsReader:
    files = ReceivedFiles(tmp_path, ".tmp-stow-")
    return RelatedPartsReader(BOUNDARY.encode(), limit, lambda: files(suffix=".dcm"), spill_over=1000)


def _left(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in tmp_path.iterdir())


def test_a_part_over_the_spill_size_is_written_to_a_file_and_smaller_ones_stay_in_memory(tmp_path: Path) -> None:
    """Held in memory a part cost twice its size: two uploads of 512 MiB took ingest past its 2 GiB."""
    large, small = bytes(range(256)) * 40, b"small part"
    reader = _spilling_reader(tmp_path)
    body = multipart_body([large, small, large])
    parts = [p for i in range(0, len(body), 777) for p in reader.feed(body[i : i + 777])] + reader.close()
    assert [p.path is not None for p in parts] == [True, False, True]
    assert [p.path.read_bytes() if p.path else p.data for p in parts] == [large, small, large]
    assert parts[0].data == b"" and parts[0].size == len(large) and not parts[0].unwritten
    discard(parts)
    assert _left(tmp_path) == []


def test_a_body_that_breaks_off_or_a_part_over_the_limit_leaves_no_file(tmp_path: Path) -> None:
    reader = _spilling_reader(tmp_path, limit=5000)
    body = multipart_body([bytes(10_000), bytes(3000)])
    parts = reader.feed(body) + reader.close()
    assert [(p.too_large, p.path is not None) for p in parts] == [(True, False), (False, True)]
    discard(parts)
    reader = _spilling_reader(tmp_path)
    reader.feed(multipart_body([bytes(3000)])[:2500])  # cut inside its part
    assert len(_left(tmp_path)) == 1
    reader.discard()
    assert _left(tmp_path) == []


def test_a_part_no_file_can_be_made_for_is_dropped_not_held_in_memory(tmp_path: Path) -> None:
    """With no file for it (no space, no descriptor), every part after was held in memory again, twice."""

    def no_space() -> SpillFile:
        raise OSError(28, "No space left on device")

    reader = RelatedPartsReader(BOUNDARY.encode(), 1 << 20, no_space, spill_over=1000)
    body = multipart_body([bytes(5000), b"small part"])
    parts = reader.feed(body) + reader.close()
    assert [(p.unwritten, p.data, p.path, p.size) for p in parts] == [
        (True, b"", None, 5000),
        (False, b"small part", None, 10),
    ]
