"""Bounded work for any input: a deflate bomb and sequences nested without end are refused at the door,
with a reason, before pydicom (or a later stage) inflates or recurses through them."""

from __future__ import annotations

import mmap
import struct
import threading
import tracemalloc
import zlib
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from services.common.blob_store import LocalBlobStore
from services.common.dicom import header
from services.common.dicom.header import (
    InputLimits,
    InstanceHeader,
    InvalidInstance,
    check_whole_read,
    inflate_bounded,
    inspect_instance,
)
from services.common.dicom.part10 import dataset_to_bytes
from services.common.dicom.synthetic import plan_study, study_instances
from services.common.topics import Topics
from services.ingest.acceptance import Acceptance, Rejected
from services.ingest.receipts import MemoryReceiptStore
from services.ingest.settings import IngestSettings
from services.ingest.status_codes import (
    DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
    OUT_OF_RESOURCES_TOO_LARGE,
    status_for_result,
)
from services.ingest.wiring import input_limits
from services.proto_gen.imx.v1 import events_pb2
from tests.unit.ingest.samples import RecordingBus

MIB = 1024 * 1024
LIMIT = 10**10
CONTENT_SEQUENCE = 0x0040A730


def _dataset(transfer_syntax: str) -> Dataset:
    ds = next(study_instances(plan_study(5, "CT", 1, "RXA01")))
    del ds.PixelData
    del ds.Rows
    del ds.Columns
    del ds.ImageType  # with no pixel data, an image header would read as cut short
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    return ds


def _body_offset(data: bytes) -> int:
    group_length = struct.unpack_from("<I", data, 132 + 8)[0]
    return 132 + 12 + group_length


PIXEL_DATA = struct.pack("<HH2sH", 0x7FE0, 0x0010, b"OB", 0)
# A private element after the header, as tools/chaos_inputs.py makes its bombs: a header-only read
# does not stop before it, so its value must be skipped, not read.
PRIVATE_FILLER = (
    struct.pack("<HH2sH", 0x7FD1, 0x0010, b"LO", 10) + b"IMX TEST  " + struct.pack("<HH2sH", 0x7FD1, 0x1010, b"OB", 0)
)


def deflate_bomb(inflated_bytes: int, filler: bytes = PIXEL_DATA) -> bytes:
    """A valid header followed by an element of zeros (Pixel Data unless `filler` says otherwise),
    all deflated (PS3.5 A.5)."""
    plain = dataset_to_bytes(_dataset(ExplicitVRLittleEndian))
    deflated = dataset_to_bytes(_dataset(DeflatedExplicitVRLittleEndian))
    meta = deflated[: _body_offset(deflated)]
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    parts = [compressor.compress(plain[_body_offset(plain) :])]
    parts.append(compressor.compress(filler + struct.pack("<I", inflated_bytes)))
    zeros = bytes(MIB)
    for _ in range(inflated_bytes // MIB):
        parts.append(compressor.compress(zeros))
    parts.append(compressor.flush())
    return meta + b"".join(parts)


def _explicit_nest(levels: int, undefined: bool) -> bytes:
    """`levels` Content Sequences, one inside the other, explicit VR little endian."""
    if undefined:
        sequence = struct.pack("<HH2sHI", 0x0040, 0xA730, b"SQ", 0, 0xFFFFFFFF)
        opening = sequence + struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
        closing = struct.pack("<HHI", 0xFFFE, 0xE00D, 0) + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
        return opening * levels + closing * levels
    headers = []
    item_length = 0  # the innermost item is empty
    for _ in range(levels):  # from the inside out
        headers.append(struct.pack("<HHI", 0xFFFE, 0xE000, item_length))
        headers.append(struct.pack("<HH2sHI", 0x0040, 0xA730, b"SQ", 0, 8 + item_length))
        item_length += 8 + 12
    return b"".join(reversed(headers))


def nested_file(levels: int, undefined: bool = False) -> bytes:
    """A valid CT header whose last element holds `levels` nested sequences (private-free, tag-ordered)."""
    data = dataset_to_bytes(_dataset(ExplicitVRLittleEndian))
    return data + _explicit_nest(levels, undefined)


def _reason(data: bytes, limits: InputLimits) -> tuple[str, str]:
    with pytest.raises(InvalidInstance) as caught:
        inspect_instance(data, LIMIT, limits)
    return caught.value.reason, caught.value.detail


def test_a_deflate_bomb_is_refused_without_inflating_it() -> None:
    bomb = deflate_bomb(200 * MIB)
    assert len(bomb) < 1 * MIB
    tracemalloc.start()
    try:
        reason = _reason(bomb, InputLimits(max_inflated_bytes=8 * MIB))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert reason == ("inflated-too-large", str(8 * MIB))
    assert peak < 16 * MIB, f"inflating held {peak // MIB} MiB"


def test_a_deflated_instance_within_the_limit_is_accepted() -> None:
    data = deflate_bomb(2 * MIB)
    header = inspect_instance(data, LIMIT, InputLimits(max_inflated_bytes=8 * MIB))
    assert header.transfer_syntax_uid == DeflatedExplicitVRLittleEndian


def _inspected_with_peak(data: bytes) -> tuple[InstanceHeader, int]:
    """The instance's header, and the most memory Python held while reading it."""
    tracemalloc.start()
    try:
        header = inspect_instance(data, LIMIT, InputLimits())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return header, peak


@pytest.mark.parametrize("filler", [PIXEL_DATA, PRIVATE_FILLER], ids=["pixel-data", "private-element"])
def test_a_large_deflated_instance_within_the_limit_is_inspected_in_bounded_memory(filler: bytes) -> None:
    header, peak = _inspected_with_peak(deflate_bomb(300 * MIB, filler))
    assert header.transfer_syntax_uid == DeflatedExplicitVRLittleEndian
    assert header.sop_instance_uid and header.modality == "CT"
    assert peak < 64 * MIB, f"inspecting a 300 MiB deflated instance held {peak // MIB} MiB"


def test_a_deflated_instance_that_does_not_compress_is_inspected_in_bounded_memory() -> None:
    """Noise does not deflate: the deflated instance is as large as the inflated one, and the character
    set check handed zlib all of it, whose unconsumed tail then copied it (48 MiB here, 300 MiB for a
    300 MiB instance)."""
    import os

    plain = dataset_to_bytes(_dataset(ExplicitVRLittleEndian))
    deflated = dataset_to_bytes(_dataset(DeflatedExplicitVRLittleEndian))
    noise = os.urandom(48 * MIB)
    compressor = zlib.compressobj(1, zlib.DEFLATED, -zlib.MAX_WBITS)
    body = compressor.compress(plain[_body_offset(plain) :] + PIXEL_DATA + struct.pack("<I", len(noise)))
    data = deflated[: _body_offset(deflated)] + body + compressor.compress(noise) + compressor.flush()
    del noise
    assert len(data) > 48 * MIB
    header, peak = _inspected_with_peak(data)
    assert header.transfer_syntax_uid == DeflatedExplicitVRLittleEndian
    assert peak < 24 * MIB, f"inspecting a {len(data) // MIB} MiB deflated instance held {peak // MIB} MiB"


def test_inflating_stops_at_the_limit_and_returns_everything_below_it() -> None:
    payload = bytes(range(256)) * 40_000
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    deflated = compressor.compress(payload) + compressor.flush()
    assert inflate_bounded(deflated, len(payload)) == payload
    with pytest.raises(InvalidInstance):
        inflate_bounded(deflated, len(payload) - 1)


@pytest.mark.parametrize("undefined", [False, True], ids=["defined-lengths", "undefined-lengths"])
def test_sequences_nested_deeper_than_the_limit_are_refused(undefined: bool) -> None:
    limits = InputLimits(max_sequence_depth=32)
    assert _reason(nested_file(20_000, undefined), limits) == ("too-deep", "32")
    assert _reason(nested_file(33, undefined), limits) == ("too-deep", "32")
    inspect_instance(nested_file(32, undefined), LIMIT, limits)


def test_deep_nesting_is_found_in_implicit_vr_and_inside_a_deflated_data_set() -> None:
    limits = InputLimits(max_sequence_depth=8)
    for transfer_syntax in (ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian):
        ds = _dataset(transfer_syntax)
        inner = Dataset()
        for _ in range(9):
            outer = Dataset()
            outer.ContentSequence = Sequence([inner])
            inner = outer
        ds.ContentSequence = inner.ContentSequence
        data = dataset_to_bytes(ds)
        assert _reason(data, limits) == ("too-deep", "8"), transfer_syntax
        assert inspect_instance(data, LIMIT, InputLimits(max_sequence_depth=9)).modality == "CT"


def _with_document(transfer_syntax: str, document: bytes, latin1: bool = False) -> bytes:
    """An encapsulated-document header with a large Encapsulated Document (0042,0011), no pixel data."""
    ds = _dataset(transfer_syntax)
    if latin1:  # text pydicom must decode: the byte walk leaves it to pydicom
        ds.SpecificCharacterSet, ds.StudyDescription = "ISO_IR 100", "Tête"
    ds.EncapsulatedDocument = document
    return dataset_to_bytes(ds)


@pytest.mark.parametrize(
    ("transfer_syntax", "latin1"),
    [(ImplicitVRLittleEndian, False), (ExplicitVRLittleEndian, True)],
    ids=["implicit-vr", "latin-1-text"],
)
def test_a_large_value_before_the_pixel_data_is_skipped_unread_and_a_cut_one_is_still_refused(
    transfer_syntax: str, latin1: bool
) -> None:
    """pydicom read every value before the pixel data whole: a 286 MiB encapsulated document took ingest
    from 56 to 628 MiB (implicit VR, or text the byte walk leaves to pydicom)."""
    data = _with_document(transfer_syntax, bytes(64 * MIB), latin1)
    header, peak = _inspected_with_peak(data)
    assert header.modality == "CT"
    assert peak < 8 * MIB, f"inspecting a 64 MiB document held {peak // MIB} MiB"
    assert _reason(data[:-MIB], InputLimits()) == ("truncated", "header")


def _flat_file(transfer_syntax: str, elements: int) -> bytes:
    """A valid CT header followed by `elements` empty private elements (8 bytes each)."""
    data = dataset_to_bytes(_dataset(transfer_syntax))
    if transfer_syntax == ImplicitVRLittleEndian:
        filler = b"".join(struct.pack("<HHI", 0x7FD1, 0x1000 + i % 0xF000, 0) for i in range(elements))
    else:
        filler = b"".join(struct.pack("<HH2sH", 0x7FD1, 0x1000 + i, b"LO", 0) for i in range(elements))
    return data + filler


def test_more_elements_than_pydicom_may_hold_are_refused_before_it_reads_them() -> None:
    """30 MiB of empty 8-byte elements took pydicom 1.1 GB and 23 s of CPU (implicit VR: pydicom reads it)."""
    limits = InputLimits(max_elements=2_000)
    assert _reason(_flat_file(ImplicitVRLittleEndian, 3_000), limits) == ("too-many-elements", "2000")
    assert inspect_instance(_flat_file(ImplicitVRLittleEndian, 1_000), LIMIT, limits).modality == "CT"


def test_the_byte_walk_passes_no_more_than_its_limit_and_holds_nothing() -> None:
    """An explicit VR header is read in place: pydicom's limit is not its, only the walk's time is."""
    assert inspect_instance(_flat_file(ExplicitVRLittleEndian, 3_000), LIMIT, InputLimits(max_elements=2_000))
    walked = InputLimits(max_walked=2_000)
    assert _reason(_flat_file(ExplicitVRLittleEndian, 3_000), walked) == ("too-many-elements", "2000")
    assert _reason(_with_items(ExplicitVRLittleEndian, 3_000, False), walked) == ("too-many-elements", "2000")
    assert inspect_instance(_with_items(ExplicitVRLittleEndian, 1_000, False), LIMIT, walked).modality == "CT"


def _with_items(transfer_syntax: str, items: int, undefined: bool, latin1: bool = False) -> bytes:
    """A valid CT header ending with a Content Sequence of `items` empty items, of undefined length or not;
    `latin1`: with text only pydicom reads (the byte walk leaves it to pydicom)."""
    ds = _dataset(transfer_syntax)
    if latin1:
        ds.SpecificCharacterSet, ds.StudyDescription = "ISO_IR 100", "Tête"
    body = struct.pack("<HHI", 0xFFFE, 0xE000, 0) * items
    length = 0xFFFFFFFF if undefined else len(body)
    if undefined:
        body += struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    if transfer_syntax == ImplicitVRLittleEndian:
        header = struct.pack("<HHI", 0x0040, 0xA730, length)
    else:
        header = struct.pack("<HH2sHI", 0x0040, 0xA730, b"SQ", 0, length)
    return dataset_to_bytes(ds) + header + body


@pytest.mark.parametrize(
    ("transfer_syntax", "latin1"),
    [(ImplicitVRLittleEndian, False), (ExplicitVRLittleEndian, True)],
    ids=["implicit-vr", "explicit-vr-latin-1"],
)
def test_items_pydicom_reads_count_and_those_it_skips_do_not(transfer_syntax: str, latin1: bool) -> None:
    """Items were not counted: 1 M empty items (7.6 MiB; 13 KiB deflated) took 15-18 s of CPU and up to 1.4 GB.
    pydicom reads through a sequence of undefined length, item by item, and skips one of defined length."""
    limits = InputLimits(max_elements=2_000)
    assert _reason(_with_items(transfer_syntax, 1_000, True, latin1), limits) == ("too-many-elements", "2000")
    assert inspect_instance(_with_items(transfer_syntax, 600, True, latin1), LIMIT, limits).modality == "CT"
    assert inspect_instance(_with_items(transfer_syntax, 1_000, False, latin1), LIMIT, limits).modality == "CT"


@pytest.mark.parametrize("vr", [b"ZZ", b"\0\0"], ids=["unknown-capitals", "not-a-vr"])
def test_an_element_of_a_vr_no_standard_names_does_not_end_the_count(vr: bytes) -> None:
    """The walk stopped at the first VR it did not know, and pydicom read on: one such element, then
    3.9 M empty ones, was accepted (19 s of CPU, 1.4 GB)."""
    data = dataset_to_bytes(_dataset(ExplicitVRLittleEndian)) + struct.pack("<HH2sH", 0x7FD0, 0x0010, vr, 0)
    flood = b"".join(struct.pack("<HH2sH", 0x7FD1, 0x1000 + i, b"LO", 0) for i in range(3_000))
    assert _reason(data + flood, InputLimits(max_elements=2_000)) == ("too-many-elements", "2000")


def test_explicit_items_of_an_unknown_sequence_are_read_as_pydicom_reads_them() -> None:
    """A UN sequence of undefined length is implicit VR inside (PS3.5 6.2.2), but pydicom reads an item whose
    first element names a VR as explicit: read as implicit, the walk lost its way and a valid instance with
    20 MiB of pixel data was refused as holding too many elements."""
    items = struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
    items += struct.pack("<HH2sH", 0x0009, 0x1002, b"LO", 4) + b"ABCD" + struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
    unknown = struct.pack("<HH2sHI", 0x0009, 0x1001, b"UN", 0, 0xFFFFFFFF) + items
    unknown += struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    ds = _dataset(ExplicitVRLittleEndian)
    ds.SpecificCharacterSet, ds.StudyDescription = "ISO_IR 100", "Tête"  # read by pydicom
    head = dataset_to_bytes(ds)
    at = head.index(struct.pack("<HH", 0x0010, 0x0010))  # before Patient's Name: the tags ascend
    pixels = struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, 20 * MIB) + bytes(20 * MIB)
    assert inspect_instance(head[:at] + unknown + head[at:] + pixels, LIMIT, InputLimits()).modality == "CT"


def _latin1_head() -> bytes:
    ds = _dataset(ExplicitVRLittleEndian)
    ds.SpecificCharacterSet, ds.StudyDescription = "ISO_IR 100", "Tête"  # read by pydicom
    return dataset_to_bytes(ds)


def _empty_items(count: int) -> bytes:
    header = struct.pack("<HH2sHI", 0x7FD1, 0x1012, b"SQ", 0, 0xFFFFFFFF)
    return header + struct.pack("<HHI", 0xFFFE, 0xE000, 0) * count + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)


@pytest.mark.parametrize("first_vr", [b"ZZ", b"xx"], ids=["two-capitals-unknown", "implicit"])
def test_an_item_read_in_the_encoding_pydicom_finds_in_it_is_counted_whole(first_vr: bytes) -> None:
    """pydicom takes an item as explicit when its first element's VR is any two capitals, else implicit.
    Read otherwise, the walk took a length from the wrong bytes, jumped past the end, and 2 M items (24 KiB
    deflated) were accepted: 30 s of CPU and 1.3-2.5 GB."""
    if first_vr == b"ZZ":
        first = struct.pack("<HH2sH", 0x7FD1, 0x1011, b"ZZ", 0x0400) + bytes(0x400)
    else:  # implicit: its length's bytes read as "OB" and a huge length to a walk taking it as explicit
        first = struct.pack("<HHI", 0x7FD1, 0x1011, 2) + b"xx"
        first += struct.pack("<HH", 0x7FD1, 0x1013) + b"OB\0\0" + struct.pack("<I", 0xFFFFFFF0)
        first += bytes(0x424F - 4)
    item = struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF) + first + _empty_items(1_500)
    item += struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
    sequence = struct.pack("<HH2sH", 0x7FD1, 0x0010, b"LO", 4) + b"ACME"
    sequence += struct.pack("<HH2sHI", 0x7FD1, 0x1010, b"UN", 0, 0xFFFFFFFF) + item
    sequence += struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    data = _latin1_head() + sequence
    assert _reason(data, InputLimits(max_elements=2_000)) == ("too-many-elements", "2000")


def test_encapsulated_fragments_inside_a_sequence_are_bytes_not_elements() -> None:
    """An icon's JPEG fragment was walked as elements: 512 bytes of 0xFF refused a valid instance as too deep."""
    icon = struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, 0xFFFFFFFF)
    icon += struct.pack("<HHI", 0xFFFE, 0xE000, 0)  # the offset table, empty
    icon += struct.pack("<HHI", 0xFFFE, 0xE000, 512) + b"\xff" * 512 + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    item = struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF) + icon + struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
    sequence = struct.pack("<HH2sHI", 0x0088, 0x0200, b"SQ", 0, 0xFFFFFFFF) + item
    sequence += struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    assert inspect_instance(_latin1_head() + sequence, LIMIT, InputLimits()).modality == "CT"


def test_a_fragment_running_past_the_end_does_not_hide_what_follows() -> None:
    """pydicom, failing to read such a fragment, searches for the delimiter and reads on; the walk jumped
    over the rest, and 2 M items after it were accepted (24 s, 1.3 GB)."""
    encapsulated = struct.pack("<HH2sHI", 0x7FD1, 0x1010, b"OB", 0, 0xFFFFFFFF)
    encapsulated += struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFF00) + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    creator = struct.pack("<HH2sH", 0x7FD1, 0x0010, b"LO", 4) + b"ACME"
    data = _latin1_head() + creator + encapsulated + _empty_items(3_000)
    assert _reason(data, InputLimits(max_elements=2_000)) == ("too-many-elements", "2000")


def test_a_top_level_encoded_otherwise_than_its_transfer_syntax_says_is_read_as_pydicom_reads_it() -> None:
    """pydicom takes the whole data set as implicit when its first element is: read as explicit, an implicit
    element's length bytes reading "OB" made the walk jump past 3,000 items."""
    implicit = _dataset(ImplicitVRLittleEndian)
    del implicit.SpecificCharacterSet
    explicit = _dataset(ExplicitVRLittleEndian)
    del explicit.SpecificCharacterSet
    inner, outer = dataset_to_bytes(implicit), dataset_to_bytes(explicit)
    creator = struct.pack("<HHI", 0x7FD1, 0x0010, 4) + b"ACME"
    trick = struct.pack("<HH", 0x7FD1, 0x1010) + b"OB\0\0" + struct.pack("<I", 0xFFFFFFF0) + bytes(0x424F - 4)
    flood = struct.pack("<HHI", 0x7FD1, 0x1012, 0xFFFFFFFF) + struct.pack("<HHI", 0xFFFE, 0xE000, 0) * 3_000
    flood += struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    data = outer[: _body_offset(outer)] + inner[_body_offset(inner) :] + creator + trick + flood
    assert _reason(data, InputLimits(max_elements=2_000)) == ("too-many-elements", "2000")


def test_an_unknown_value_of_defined_length_that_begins_like_an_item_is_bytes() -> None:
    """pydicom keeps it as bytes; walked as a sequence, a valid instance with 4 MiB of pixels was refused."""
    ds = _dataset(ImplicitVRLittleEndian)
    ds.Rows = ds.Columns = 1024
    ds.BitsAllocated, ds.ImageType = 32, ["ORIGINAL"]
    value = struct.pack("<HHI", 0xFFFE, 0xE000, 16) + struct.pack("<HHI", 0x0011, 0x0022, 0x7FFFFFFF) + bytes(8)
    private = struct.pack("<HHI", 0x7FD1, 0x0010, 4) + b"ACME" + struct.pack("<HHI", 0x7FD1, 0x1010, len(value))
    pixels = struct.pack("<HHI", 0x7FE0, 0x0010, 4 * MIB) + bytes(4 * MIB)
    assert inspect_instance(dataset_to_bytes(ds) + private + value + pixels, LIMIT, InputLimits()).modality == "CT"


def test_a_whole_read_counts_what_follows_the_pixel_data_and_every_sequence() -> None:
    """De-identification's pydicom path reads past the pixel data, and opens sequences of defined length too:
    1 M items after the pixel data, or 1.9 M of defined length, passed its check (0.7-2.6 GB)."""
    pixels = struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, 4) + bytes(4)
    after = (
        struct.pack("<HH2sH", 0x7FE1, 0x0010, b"LO", 4)
        + b"ACME"
        + _empty_items(3_000).replace(struct.pack("<HH", 0x7FD1, 0x1012), struct.pack("<HH", 0x7FE1, 0x1012), 1)
    )
    with pytest.raises(InvalidInstance, match="too-many-elements"):
        check_whole_read(_latin1_head() + pixels + after, 4_000)
    defined = _with_items(ExplicitVRLittleEndian, 3_000, False)
    assert inspect_instance(defined, LIMIT, InputLimits(max_elements=4_000)).modality == "CT"  # pydicom skips it
    with pytest.raises(InvalidInstance, match="too-many-elements"):
        check_whole_read(defined, 4_000)


def test_a_file_cut_inside_a_value_skipped_unread_is_truncated_when_mapped_too(tmp_path: Path) -> None:
    """pydicom skips such a value by seeking, which a memory map refused past its end: "not-dicom"."""
    cut = _with_document(ImplicitVRLittleEndian, bytes(4 * MIB))[:-MIB]
    path = tmp_path / "cut.dcm"
    path.write_bytes(cut)
    with path.open("rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        assert _reason(mapped, InputLimits()) == ("truncated", "header")  # type: ignore[arg-type]


def test_ordinary_instances_with_sequences_and_pixel_data_pass_the_walk() -> None:
    for ds in study_instances(plan_study(3, "MR", 1, "RXA01")):
        inspect_instance(dataset_to_bytes(ds), LIMIT, InputLimits(max_sequence_depth=4))


@pytest.mark.parametrize(
    ("data", "reason", "status"),
    [
        (lambda: deflate_bomb(64 * MIB), "inflated-too-large", OUT_OF_RESOURCES_TOO_LARGE),
        (lambda: nested_file(5_000), "too-deep", DATA_SET_DOES_NOT_MATCH_SOP_CLASS),
        (lambda: _flat_file(ImplicitVRLittleEndian, 3_000), "too-many-elements", DATA_SET_DOES_NOT_MATCH_SOP_CLASS),
    ],
    ids=["deflate-bomb", "deep-nesting", "many-elements"],
)
def test_ingest_quarantines_over_limit_inputs_with_a_reason(data, reason: str, status: int, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bus = RecordingBus()
    topics = Topics("t-")
    acceptance = Acceptance(
        blobs=LocalBlobStore(tmp_path / "blobs"),
        receipts=MemoryReceiptStore(),
        bus=bus,
        topics=topics,
        max_instance_bytes=LIMIT // 10,
        limits=InputLimits(max_inflated_bytes=16 * MIB, max_sequence_depth=32, max_elements=2_000),
    )
    result = acceptance.accept(data(), "trust-a", "stow-rs")
    assert isinstance(result, Rejected) and result.quarantined
    assert result.reason == reason
    assert status_for_result(result) == status
    assert not bus.on(topics.ingested)
    [message] = bus.on(topics.quarantine)
    assert events_pb2.Quarantined.FromString(message.value).reason == reason


def test_large_deflated_data_sets_take_turns_on_disk_and_small_ones_never_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each large one was inflated onto /tmp at once, up to 1 GiB each: a few together filled the pod's
    bounded /tmp, and the kubelet evicted it with every transfer in flight. IMX_MAX_SPILLED_INFLATIONS
    (ingest's settings) sets how many take their turn at once."""
    limits = input_limits(IngestSettings(max_spilled_inflations=1))
    assert limits.max_spilled_inflations == 1
    turns = threading.BoundedSemaphore(1)
    waited = threading.Event()

    class Turn:  # the one turn, saying when someone had to wait for it
        def __enter__(self) -> None:
            if not turns.acquire(blocking=False):
                waited.set()
                turns.acquire()

        def __exit__(self, *_: object) -> None:
            turns.release()

    asked: list[int] = []
    monkeypatch.setattr(header, "_spill_slots", lambda count: asked.append(count) or Turn())
    large, small = deflate_bomb(8 * MIB), dataset_to_bytes(_dataset(DeflatedExplicitVRLittleEndian))
    with turns:  # another large one holds the only turn
        second = threading.Thread(target=inspect_instance, args=(large, LIMIT, limits))
        second.start()
        assert waited.wait(10), "a second large one spilled while another held the only turn"
        inspect_instance(small, LIMIT, limits)  # inflated in memory: no turn needed, it does not wait
    second.join(10)
    assert not second.is_alive() and asked == [1]
