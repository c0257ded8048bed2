"""Content negotiation and multipart framing of the partners' WADO-RS answers (no sockets)."""

from __future__ import annotations

import email.parser
import email.policy
from pathlib import Path

import pytest

from services.delivery.dicomweb_media import (
    FilePart,
    Representation,
    accepts_dicom_json,
    choose_representation,
    multipart_body,
    multipart_content_type,
    parse_accept,
)

EXPLICIT = "1.2.840.10008.1.2.1"
JPEG = "1.2.840.10008.1.2.4.50"


def test_accept_ranges_are_ordered_by_q_and_q0_is_dropped() -> None:
    ranges = parse_accept('application/dicom;q=0.5, multipart/related; type="application/dicom"; q=0.9, */*;q=0')
    assert [r.media_type for r in ranges] == ["multipart/related", "application/dicom"]
    assert ranges[0].params == {"type": "application/dicom"}


def test_a_quoted_comma_does_not_split_a_range() -> None:
    (only,) = parse_accept('multipart/related; type="application/dicom"; x="a,b"')
    assert only.params["x"] == "a,b"


@pytest.mark.parametrize(
    ("accept", "single", "expected"),
    [
        (None, True, Representation.SINGLE),
        (None, False, Representation.MULTIPART),
        ("*/*", True, Representation.SINGLE),
        ("*/*", False, Representation.MULTIPART),
        ("application/dicom", True, Representation.SINGLE),
        (f"application/dicom; transfer-syntax={EXPLICIT}", True, Representation.SINGLE),
        ('multipart/related; type="application/dicom"', True, Representation.MULTIPART),
        ('multipart/related; type="application/dicom"; transfer-syntax=*', False, Representation.MULTIPART),
        ("multipart/related; type=application/dicom", False, Representation.MULTIPART),
        (f'multipart/related; type="application/dicom"; transfer-syntax={EXPLICIT}', False, Representation.MULTIPART),
        # a series cannot be one application/dicom body
        ("application/dicom", False, None),
        # conversions this server does not do
        (f"application/dicom; transfer-syntax={JPEG}", True, None),
        (f'multipart/related; type="application/dicom"; transfer-syntax={JPEG}', False, None),
        ('multipart/related; type="application/octet-stream"', False, None),
        ("image/jpeg", True, None),
        # a later acceptable choice is taken
        (f"application/dicom; transfer-syntax={JPEG}, application/dicom; q=0.5", True, Representation.SINGLE),
        # every type named refused (q=0): 406, not the answer to no Accept at all
        ("application/dicom; q=0", True, None),
        ("*/*;q=0", False, None),
        ("", True, Representation.SINGLE),
    ],
)
def test_representation_follows_accept(accept: str | None, single: bool, expected: Representation | None) -> None:
    assert choose_representation(accept, {EXPLICIT}, single) is expected


def test_a_named_transfer_syntax_must_be_that_of_every_object() -> None:
    accept = f'multipart/related; type="application/dicom"; transfer-syntax={EXPLICIT}'
    assert choose_representation(accept, {EXPLICIT, JPEG}, single=False) is None
    assert (
        choose_representation(accept.replace(EXPLICIT, "*"), {EXPLICIT, JPEG}, single=False) is Representation.MULTIPART
    )


def test_a_transfer_syntax_asked_with_a_wildcard_range_is_held_to_as_well() -> None:
    """`multipart/*; transfer-syntax=...` and `*/*; transfer-syntax=...` were answered with JPEG."""
    for accept in (f"multipart/*; transfer-syntax={EXPLICIT}", f"*/*; transfer-syntax={EXPLICIT}"):
        assert choose_representation(accept, {JPEG}, single=False) is None, accept
        assert choose_representation(accept, {EXPLICIT}, single=False) is Representation.MULTIPART, accept
    assert choose_representation("multipart/*", {JPEG}, single=False) is Representation.MULTIPART


def test_a_remembered_answer_is_the_one_for_those_stored_syntaxes_and_a_long_header_is_still_answered() -> None:
    accept = f'multipart/related; type="application/dicom"; transfer-syntax={EXPLICIT}'
    for _ in range(2):  # the second round comes from the cache
        assert choose_representation(accept, {EXPLICIT}, single=False) is Representation.MULTIPART
        assert choose_representation(accept, {EXPLICIT, JPEG}, single=False) is None
        assert choose_representation(accept, [EXPLICIT], single=True) is Representation.MULTIPART
    padded = "text/html; q=0.5, " * 40 + "application/dicom"  # longer than the cached headers
    assert len(padded) > 512
    assert choose_representation(padded, {EXPLICIT}, single=True) is Representation.SINGLE


@pytest.mark.parametrize(
    ("accept", "ok"),
    [
        (None, True),
        ("", True),
        ("application/dicom+json", True),
        ("application/json", True),
        ("*/*", True),
        ("text/html", False),
        ("application/dicom+json;q=0", False),
    ],
)
def test_metadata_is_offered_only_as_dicom_json(accept: str | None, ok: bool) -> None:
    assert accepts_dicom_json(accept) is ok


def _parts(tmp_path: Path, contents: list[bytes]) -> list[FilePart]:
    parts = []
    for index, content in enumerate(contents):
        path = tmp_path / f"{index}.dcm"
        path.write_bytes(content)
        parts.append(FilePart(path, len(content), EXPLICIT))
    return parts


def test_multipart_body_parses_back_into_the_same_objects(tmp_path: Path) -> None:
    # Contents that look like framing must pass through untouched.
    contents = [b"DICM" + bytes(range(256)) * 10, b"\r\n--not-the-boundary\r\n\r\n", b"x" * 3_000_001]
    sent: list[int] = []
    chunks = list(multipart_body(_parts(tmp_path, contents), "b0undary", sent.append, chunk_bytes=65536))
    assert max(len(c) for c in chunks) <= 65536
    assert sum(sent) == sum(len(c) for c in contents)
    raw = (f"Content-Type: {multipart_content_type('b0undary')}\r\n\r\n").encode() + b"".join(chunks)
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(raw)
    parts = list(message.iter_parts())
    assert [p.get_payload(decode=True) for p in parts] == contents
    assert [(p.get_content_type(), p.get_param("transfer-syntax")) for p in parts] == [
        ("application/dicom", EXPLICIT)
    ] * 3
    assert [int(p["Content-Length"]) for p in parts] == [len(c) for c in contents]


def test_multipart_framing_is_exact(tmp_path: Path) -> None:
    body = b"".join(multipart_body(_parts(tmp_path, [b"A", b"BB"]), "B"))
    kind = b"Content-Type: application/dicom; transfer-syntax=1.2.840.10008.1.2.1\r\n"
    assert body == (
        b"--B\r\n" + kind + b"Content-Length: 1\r\n\r\nA"
        b"\r\n--B\r\n" + kind + b"Content-Length: 2\r\n\r\nBB"
        b"\r\n--B--\r\n"
    )


def test_content_type_names_the_boundary_and_the_part_type() -> None:
    assert multipart_content_type("xyz") == 'multipart/related; type="application/dicom"; boundary=xyz'
