"""Fast, PHI-safe inspection of a DICOM Part 10 byte string: UIDs and routing attributes only.

What is accepted: a Part 10 file (PS3.10 Section 7) with the 128-byte preamble, "DICM" and a
file meta group naming the transfer syntax. Bare data sets and files without the preamble are
rejected as "not-dicom": STOW-RS (PS3.18 application/dicom) and our C-STORE receiver both hand
us Part 10 files, and guessing the encoding (pydicom's force=True) accepts almost any bytes.

PHI safety. pydicom converts a few values while reading (the file meta group, Specific Character
Set) and, when a value is malformed, warns and logs *quoting the value*; a corrupt length can make
that value run on into the patient's name. So the bytes pydicom will convert are checked here
first (`_check_prefix`), and every other value is taken from pydicom's raw elements and decoded
here. Error messages carry a reason and a detail (an attribute keyword or a limit), never a value.

Pixel data are never decoded, but their length is checked, so a file cut short is refused. The
input may be a memory map of a file on disk (`ByteSource`): only the header's pages are read, so an
instance of any size is inspected in a few kilobytes of memory. A deflated one too: its body is
inflated a piece at a time into a temporary file, which is read through a memory map the same way.

Bounded work for any input (`InputLimits`). pydicom inflates a deflated data set whole in memory,
with no limit, and reads nested sequences recursively; so a deflated body is inflated here, in
pieces, to a temporary file and up to a limit ("inflated-too-large"); the element stream is walked
without recursion to refuse sequences nested deeper than a limit ("too-deep") and more elements than
another ("too-many-elements"); and pydicom is given the inflated data set, never the deflated one, and
every data set with its large values left unread (`defer_size`).
"""

from __future__ import annotations

import contextlib
import functools
import mmap
import re
import struct
import tempfile
import threading
import zlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from io import BytesIO
from types import MappingProxyType
from typing import BinaryIO, Literal

from pydicom import dcmread
from pydicom._uid_dict import UID_dictionary
from pydicom.charset import convert_encodings, decode_bytes
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileDataset
from pydicom.filereader import read_dataset
from pydicom.multival import MultiValue
from pydicom.tag import Tag
from pydicom.uid import UID
from pydicom.values import convert_string

from services.common.dicom.header_walk import (
    LONG_VR_BYTES,
    SHORT_VR_BYTES,
    ElementBudget,
    read_top_level,
)
from services.common.dicom.uids import is_uid_as_received

ByteSource = bytes | bytearray | mmap.mmap
"""A whole Part 10 file: bytes in memory, or a memory map of the file (read only where needed)."""

Reason = Literal[
    "not-dicom",
    "missing-uid",
    "invalid-uid",
    "dicomdir",
    "too-large",
    "truncated",
    "inflated-too-large",
    "too-deep",
    "too-many-elements",
]

MEDIA_STORAGE_DIRECTORY_STORAGE = "1.2.840.10008.1.3.10"
IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
EXPLICIT_VR_BIG_ENDIAN = "1.2.840.10008.1.2.2"
DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1.99"

# PS3.5 9.1: digits and dots, at most 64 characters. Leading zeros in a component are also
# forbidden there, but real modalities emit them, so they are tolerated.
# Specific Character Set terms (PS3.3 C.12.1.1.2) are short upper-case CS values.
_CHARSET = re.compile(rb"[A-Za-z0-9 _\\-]{0,160}")
_PREFIX = 132  # preamble + "DICM"
_META_START = _PREFIX + 12  # the group length element itself is not counted by its value
_PIXEL_TAGS = (0x7FE00008, 0x7FE00009, 0x7FE00010)  # float, double float, pixel data
_SPECIFIC_CHARACTER_SET = 0x00080005
_UNDEFINED_LENGTH = 0xFFFFFFFF
_ITEM = b"\xfe\xff\x00\xe0"
_SEQUENCE_DELIMITER = b"\xfe\xff\xdd\xe0"
_CHARSET_DEPENDENT = frozenset({"StudyDescription", "Manufacturer", "ManufacturerModelName"})
_MAY_BE_UNDEFINED = frozenset({b"SQ", b"OB", b"OW", b"UN"})  # PS3.5 7.1.2
_INFLATE_INPUT_CHUNK = 64 * 1024
_INFLATE_OUTPUT_CHUNK = 1024 * 1024
# A deflated data set this small is read from memory; a larger one from a memory-mapped file.
_INFLATED_IN_MEMORY = 4 * 1024 * 1024
# Values larger than this are skipped, not read, when the inflated header is parsed: none of the
# attributes read here comes near it, and a bomb's filler element would otherwise be read whole.
_DEFER_SIZE = 64 * 1024
GIB = 1024**3
_MEDIA_STORAGE_SOP_CLASS_UID = 0x00020002
_SOP_CLASS_UID = 0x00080016
_ROWS = 0x00280010
_IMAGE_TYPE = 0x00080008
_UID_KEYWORDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")
# Printable ASCII, padded with NULs or spaces.
_PRINTABLE_ASCII = re.compile(rb"[\x20-\x7e]*\x00*")


@dataclass(frozen=True)
class InputLimits:
    """Work any one input may cause, checked before the work is done.

    `max_inflated_bytes`: the inflated size of a deflated data set (PS3.5 A.5); a few hundred KB of
    deflate can inflate to gigabytes. `max_sequence_depth`: sequences within sequences (PS3.5 7.5);
    real IODs nest a handful of levels, recursive readers fail at about a thousand.
    `max_spilled_inflations`: deflated data sets inflated onto disk (the temp folder) at once, each up
    to `max_inflated_bytes`; more wait for a turn, so a few large ones cannot fill a pod's bounded /tmp
    (and have it evicted with every transfer in flight). Small ones, inflated in memory, never wait.
    `max_elements`: what a pydicom read of the header may hold, in elements (`_check_structure`: each
    top-level element before the pixel data, and each element and item, an item counted thrice, inside
    sequences of undefined length); an element is an object of ~270 bytes, an item ~750: 30 MiB of empty
    8-byte elements took 1.1 GB and 23 s of CPU. Only a header pydicom must read (implicit VR, text whose
    decoding depends on the character set, anything irregular) is held to it: the byte walk reads an
    explicit VR header in place. `max_walked`: elements and items either walk passes, anywhere, its time
    (about 4 million a second): a large enhanced multi-frame instance has a few million (one of 8,000 MR
    frames, ~1 million; with a vendor's private per-frame attributes, 5,000 frames did).
    """

    max_inflated_bytes: int = GIB
    max_sequence_depth: int = 32
    max_spilled_inflations: int = 2
    max_elements: int = 1_000_000
    max_walked: int = 20_000_000


DEFAULT_LIMITS = InputLimits()

ROUTING_KEYWORDS: Mapping[str, str] = MappingProxyType(
    {
        "modality": "Modality",
        "sop_class_uid": "SOPClassUID",
        "study_description": "StudyDescription",
        "body_part_examined": "BodyPartExamined",
        "burned_in_annotation": "BurnedInAnnotation",
        "manufacturer": "Manufacturer",
        "manufacturer_model_name": "ManufacturerModelName",
        "rows": "Rows",
        "columns": "Columns",
    }
)


# Explicit VR little endian transfer syntaxes pydicom knows, native or encapsulated (not deflated).
_WALKED_SYNTAXES = frozenset(
    uid
    for uid in UID_dictionary
    if UID(uid).is_transfer_syntax
    and UID(uid).is_little_endian
    and not UID(uid).is_implicit_VR
    and not UID(uid).is_deflated
)
_WALKED_KEYWORDS: Mapping[str, int] = MappingProxyType(
    {kw: int(Tag(kw)) for kw in (*_UID_KEYWORDS, "Modality", *ROUTING_KEYWORDS.values())}
)
_WALKED_TAGS = frozenset({*_WALKED_KEYWORDS.values(), _SPECIFIC_CHARACTER_SET, _IMAGE_TYPE})


class InvalidInstance(Exception):
    """An input that can never succeed; `reason` is machine-readable, `detail` names a tag or limit."""

    def __init__(self, reason: Reason, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason: Reason = reason
        self.detail = detail


@dataclass(frozen=True)
class InstanceHeader:
    """Identity of one instance plus the attributes routing rules may match on.

    `routing` has every key of ROUTING_KEYWORDS; an absent or empty attribute maps to "".
    Rows and Columns are decimal strings, so the map fits a protobuf map<string, string>.
    """

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    modality: str
    routing: Mapping[str, str] = field(hash=False)


def inspect_instance(data: ByteSource, max_bytes: int, limits: InputLimits = DEFAULT_LIMITS) -> InstanceHeader:
    """Read the header of a Part 10 instance; raise InvalidInstance for anything unusable."""
    if len(data) > max_bytes:
        raise InvalidInstance("too-large", str(max_bytes))
    try:
        transfer_syntax, body = _check_prefix(data)
        if transfer_syntax == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN:
            return _header(_read_deflated(data, body, limits), data, 0, transfer_syntax)
        fast = _fast_header(data, body, transfer_syntax, limits)
        if fast is not None:
            return fast
        _check_structure(data, body, transfer_syntax, limits)
        fp = _stream(data)
        # Values over _DEFER_SIZE left unread: an encapsulated document of hundreds of MiB before the pixel
        # data was read whole into memory (an implicit VR instance, or text pydicom must decode, comes here).
        ds = dcmread(fp, stop_before_pixels=True, force=False, defer_size=_DEFER_SIZE)
        return _header(ds, data, fp.tell(), transfer_syntax)
    except InvalidInstance:
        raise
    except Exception as exc:  # pydicom raises many types on bad input; all mean the same here
        raise InvalidInstance("not-dicom") from exc


def check_whole_read(data: ByteSource, max_elements: int) -> None:
    """Refuse (InvalidInstance "too-many-elements") an instance whose header, read whole into objects (every
    element and item, nested ones too: de-identification's pydicom path), would be more than `max_elements`
    of them. Ingest's limits let an explicit VR header of up to `InputLimits.max_walked` through, since its
    byte walk holds none; read whole, 3 M items took 1.8 GB. A deflated data set is not walked here."""
    transfer_syntax, body = _check_prefix(data)
    if transfer_syntax != DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN:
        limits = InputLimits(max_elements=max_elements, max_walked=max_elements)
        _check_structure(data, body, transfer_syntax, limits, whole=True)


def _fast_header(data: ByteSource, body: int, transfer_syntax: str, limits: InputLimits) -> InstanceHeader | None:
    """The header read by walking the bytes (header_walk.py), for a usable explicit VR little endian
    instance; None whenever pydicom must decide (any doubt, and every input that would be refused,
    so that refusals keep pydicom's reasons). Gives what the pydicom path gives: tests compare them."""
    if transfer_syntax not in _WALKED_SYNTAXES:
        return None
    top = read_top_level(data, body, _WALKED_TAGS, limits.max_sequence_depth, limits.max_walked)
    if top is None:
        return None
    values = top.values
    if _SPECIFIC_CHARACTER_SET in values:
        try:  # what pydicom does with it while reading, where it can raise
            convert_encodings(convert_string(values[_SPECIFIC_CHARACTER_SET], True))
        except Exception:
            return None
    dicomdir = MEDIA_STORAGE_DIRECTORY_STORAGE.encode()
    if dicomdir in _meta_value(data, _MEDIA_STORAGE_SOP_CLASS_UID) or dicomdir in values.get(_SOP_CLASS_UID, b""):
        return None
    if top.pixel_data_at is None:
        if _ROWS in values or _IMAGE_TYPE in values:
            return None  # pydicom's path refuses it as cut short
    else:
        try:
            _check_pixel_data_complete(data, top.pixel_data_at, transfer_syntax)
        except InvalidInstance:
            return None
    texts = {}
    for keyword, tag in _WALKED_KEYWORDS.items():
        text = _walked_text(keyword, values.get(tag))
        if text is None:
            return None
        texts[keyword] = text
    for keyword in _UID_KEYWORDS:
        if not texts[keyword] or not is_uid_as_received(texts[keyword]):
            return None
    return InstanceHeader(
        study_instance_uid=texts["StudyInstanceUID"],
        series_instance_uid=texts["SeriesInstanceUID"],
        sop_instance_uid=texts["SOPInstanceUID"],
        sop_class_uid=texts["SOPClassUID"],
        transfer_syntax_uid=transfer_syntax,
        modality=texts["Modality"],
        routing=MappingProxyType({key: texts[kw] for key, kw in ROUTING_KEYWORDS.items()}),
    )


def _walked_text(keyword: str, value: bytes | None) -> str | None:
    """`_text` of a raw value; None when only pydicom can say (text outside printable ASCII whose
    decoding depends on the character set)."""
    if not value:
        return ""
    if keyword in ("Rows", "Columns"):
        return str(struct.unpack("<H", value)[0]) if len(value) == 2 else ""
    if keyword in _CHARSET_DEPENDENT and not _PRINTABLE_ASCII.fullmatch(value):
        return None  # every character set pydicom knows decodes printable ASCII as ASCII
    return value.decode("latin-1").strip(" \0")


def _meta_value(data: ByteSource, wanted: int) -> bytes:
    """A file meta element's value (the group was checked by `_check_prefix`); b"" when absent."""
    offset = _PREFIX
    while offset + 8 <= len(data):
        group, element = struct.unpack_from("<HH", data, offset)
        if group != 0x0002:
            break
        start, length = _explicit_length(data, offset, data[offset + 4 : offset + 6], "<", "FileMetaInformation")
        if group << 16 | element == wanted:
            return bytes(data[start : start + length])
        offset = start + length
    return b""


def _read_deflated(data: ByteSource, body: int, limits: InputLimits) -> Dataset:
    """The header of a deflated data set (PS3.5 A.5), parsed from its inflated copy on disk.

    pydicom would read the deflated body and inflate it whole in memory, so it is handed the file
    meta group and the inflated data set separately; values over `_DEFER_SIZE` are skipped unread.
    """
    meta = dcmread(BytesIO(bytes(data[:body])), force=False).file_meta  # stops at the empty data set
    with _inflated(memoryview(data)[body:], limits.max_inflated_bytes, limits.max_spilled_inflations) as inflated:
        _check_structure(inflated, 0, DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN, limits)
        fp = _stream(inflated)
        dataset = read_dataset(fp, False, True, stop_when=_at_pixel_data, defer_size=_DEFER_SIZE)
    ds = FileDataset("", dataset, preamble=None, file_meta=meta, is_implicit_VR=False, is_little_endian=True)
    ds.set_original_encoding(False, True, dataset._character_set)
    return ds


def _at_pixel_data(tag: int, vr: str | None, length: int) -> bool:
    return tag in _PIXEL_TAGS


@functools.cache
def _spill_slots(count: int) -> threading.BoundedSemaphore:
    """The turns to inflate onto disk, one set per process and limit."""
    return threading.BoundedSemaphore(count)


@contextmanager
def _inflated(deflated: memoryview, limit: int, spill_slots: int = 2) -> Iterator[ByteSource]:
    """The inflated data set: in memory when small, else a read-only memory map of a temporary file
    (the page cache holds it, not this process; only the pages read become resident), written only
    while holding one of `spill_slots` turns."""
    with contextlib.ExitStack() as turn, tempfile.TemporaryFile(prefix="imx-inflated-") as file:
        head = bytearray()
        for piece in inflate_pieces(deflated, limit):
            if file.tell() or len(head) + len(piece) > _INFLATED_IN_MEMORY:
                if not file.tell():  # the first write to disk: wait for a turn
                    turn.enter_context(_spill_slots(spill_slots))
                if head:
                    file.write(head)
                    head = bytearray()
                file.write(piece)
            else:
                head += piece
        if not file.tell():
            yield head
            return
        file.flush()
        with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            yield mapped


def _stream(data: ByteSource) -> BinaryIO:
    """A file object over `data` that does not copy it."""
    if isinstance(data, mmap.mmap):
        return _MappedFile(data)  # type: ignore[return-value]  # read/seek/tell, all dcmread uses
    return BytesIO(data)  # shares the bytes until written to


class _MappedFile:
    """A memory map read as a file that, like one, may be sought past its end (then reads nothing): pydicom
    skips a deferred value by seeking, and mmap's seek refused, so a file cut inside one was "not-dicom"
    when mapped and "truncated" in memory."""

    def __init__(self, data: mmap.mmap) -> None:
        self._data, self._at = data, 0

    def read(self, size: int = -1) -> bytes:
        end = len(self._data) if size is None or size < 0 else self._at + size
        piece = self._data[self._at : end]
        self._at += len(piece)
        return piece

    def seek(self, offset: int, whence: int = 0) -> int:
        base = (0, self._at, len(self._data))[whence]
        self._at = max(0, base + offset)
        return self._at

    def tell(self) -> int:
        return self._at


def _header(ds: Dataset, data: ByteSource, stopped_at: int, transfer_syntax: str) -> InstanceHeader:
    if MEDIA_STORAGE_DIRECTORY_STORAGE in (_text(ds.file_meta, "MediaStorageSOPClassUID"), _text(ds, "SOPClassUID")):
        raise InvalidInstance("dicomdir", "MediaStorageSOPClassUID")
    # Deflated data sets are parsed from an inflated copy, so offsets into `data` mean nothing.
    if transfer_syntax != DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN:
        _check_complete(ds, data, stopped_at, transfer_syntax)
    return InstanceHeader(
        study_instance_uid=_uid(ds, "StudyInstanceUID"),
        series_instance_uid=_uid(ds, "SeriesInstanceUID"),
        sop_instance_uid=_uid(ds, "SOPInstanceUID"),
        sop_class_uid=_uid(ds, "SOPClassUID"),
        transfer_syntax_uid=transfer_syntax,
        modality=_text(ds, "Modality"),
        routing=MappingProxyType({key: _text(ds, kw) for key, kw in ROUTING_KEYWORDS.items()}),
    )


def _check_prefix(data: ByteSource) -> tuple[str, int]:
    """Check the bytes pydicom converts while reading; return the transfer syntax UID and where the
    data set begins.

    The file meta group is always explicit VR little endian (PS3.10 7.1). Walking it here the way
    pydicom will means every meta value pydicom converts lies inside the meta group.
    """
    if len(data) < _PREFIX or data[128:_PREFIX] != b"DICM":
        raise InvalidInstance("not-dicom")
    offset, transfer_syntax = _PREFIX, ""
    while True:
        if offset + 8 > len(data):
            raise InvalidInstance("truncated", "FileMetaInformation")
        group, element = struct.unpack_from("<HH", data, offset)
        if group != 0x0002:
            break
        vr = data[offset + 4 : offset + 6]
        start, length = _explicit_length(data, offset, vr, "<", "FileMetaInformation")
        if length == _UNDEFINED_LENGTH:
            raise InvalidInstance("not-dicom")
        if start + length > len(data):
            raise InvalidInstance("truncated", "FileMetaInformation")
        if vr == b"UI":
            keyword = keyword_for_tag(group << 16 | element) or f"({group:04X},{element:04X})"
            uid = data[start : start + length].decode("latin-1").strip(" \0")
            if uid and not is_uid_as_received(uid):
                raise InvalidInstance("invalid-uid", keyword)
            transfer_syntax = uid if keyword == "TransferSyntaxUID" else transfer_syntax
        offset = start + length
    if not transfer_syntax:
        raise InvalidInstance("missing-uid", "TransferSyntaxUID")
    _check_character_set(data, offset, transfer_syntax)
    return transfer_syntax, offset


def inflate_bounded(deflated: bytes | memoryview, limit: int) -> bytearray:
    """Inflate raw deflate (RFC 1951, as PS3.5 A.5 uses it) whole; refuse past `limit` bytes."""
    out = bytearray()
    for piece in inflate_pieces(memoryview(deflated), limit):
        out += piece
    return out


def inflate_pieces(deflated: bytes | memoryview, limit: int) -> Iterator[bytes]:
    """Inflate raw deflate a piece at a time; raise "inflated-too-large" past `limit` bytes in all.

    Input is fed in small pieces so that zlib's unconsumed tail, which it copies, stays small; output
    is asked for in pieces of at most `_INFLATE_OUTPUT_CHUNK`, so the caller decides what is kept.
    """
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    view = memoryview(deflated)
    total = 0

    def counted(piece: bytes) -> bytes:
        nonlocal total
        total += len(piece)
        if total > limit:
            raise InvalidInstance("inflated-too-large", str(limit))
        return piece

    try:
        for start in range(0, len(view), _INFLATE_INPUT_CHUNK):
            pending: bytes | memoryview = view[start : start + _INFLATE_INPUT_CHUNK]
            while pending and not inflater.eof:
                yield counted(inflater.decompress(pending, _INFLATE_OUTPUT_CHUNK))
                pending = inflater.unconsumed_tail
            if inflater.eof:
                break
        while not inflater.eof:  # output zlib held back when a piece of it was asked for
            held = inflater.decompress(b"", _INFLATE_OUTPUT_CHUNK)
            if not held:
                break
            yield counted(held)
        yield counted(inflater.flush())
        if not inflater.eof:  # the stream stops before its last block: a cut copy, which was accepted
            raise InvalidInstance("truncated", "deflated data set")
    except zlib.error:
        raise InvalidInstance("not-dicom") from None


def _check_structure(
    data: ByteSource, offset: int, transfer_syntax: str, limits: InputLimits, whole: bool = False
) -> None:
    """Walk the data set's elements without recursion and refuse sequences nested deeper than
    `limits.max_sequence_depth`, more elements and items in all than `limits.max_walked`, and more of what
    pydicom would hold than `limits.max_elements` (see `InputLimits`).

    Stops at the top-level pixel data (as a header-only read does). The encoding is read as pydicom reads
    it: an unknown VR of two capitals has a 2-byte length, other bytes mean implicit VR for that element;
    an item in an explicit VR context is implicit unless its first element's VR is two capitals (pydicom's
    `_is_implicit_vr`), a UN of undefined length is a sequence, and the file's byte order holds throughout.
    At anything else it cannot follow it stops too, leaving the other checks to pydicom and
    `_check_complete`, but only once the rest could not hold more than pydicom may.

    `whole`: as read whole (de-identification's pydicom path): past the pixel data too, and every
    sequence's items and elements held, whatever its length.
    """
    order = ">" if transfer_syntax == EXPLICIT_VR_BIG_ENDIAN else "<"
    # The top level's encoding as pydicom finds it from its first element, whatever the transfer syntax says.
    implicit_outside = not _names_a_vr(data[offset + 4 : offset + 6])
    # Open containers, innermost last: (is a sequence, end offset or None when undefined, implicit VR
    # inside, held by pydicom inside, holds fragments).
    open_: list[tuple[bool, int | None, bool, bool, bool]] = []
    depth, size = 0, len(data)
    limit, held, walked = (
        limits.max_sequence_depth,
        ElementBudget(limits.max_elements),
        ElementBudget(limits.max_walked),
    )

    def take(kept: bool, units: int) -> None:
        if not walked.take(1):
            raise InvalidInstance("too-many-elements", str(limits.max_walked))
        if kept and not held.take(units):
            raise InvalidInstance("too-many-elements", str(limits.max_elements))

    try:
        while offset + 8 <= size:
            while open_ and open_[-1][1] is not None and offset >= open_[-1][1]:
                depth -= open_.pop()[0]
            implicit, kept, fragments = (
                (open_[-1][2], open_[-1][3], open_[-1][4]) if open_ else (implicit_outside, True, False)
            )
            group, element = struct.unpack_from(order + "HH", data, offset)
            tag = group << 16 | element
            if group == 0xFFFE:  # item, item delimiter, sequence delimiter (PS3.5 7.5)
                length = struct.unpack_from(order + "I", data, offset + 4)[0]
                offset += 8
                if element == 0xE000:
                    take(kept, _ITEM_WEIGHT)
                    if fragments:  # a fragment of encapsulated data: bytes, not elements
                        if length == _UNDEFINED_LENGTH or offset + length > size:
                            break  # pydicom then searches for the delimiter and reads on: counted below
                        offset += length
                        continue
                    item_implicit = implicit or not _names_a_vr(data[offset + 4 : offset + 6])
                    item_end = None if length == _UNDEFINED_LENGTH else offset + length
                    open_.append((False, item_end, item_implicit, kept, False))
                elif open_ and open_[-1][1] is None:
                    depth -= open_.pop()[0]
                continue
            if fragments:  # neither a fragment nor the delimiter: pydicom searches for the delimiter
                break
            if not open_ and tag in _PIXEL_TAGS and not whole:
                return
            take(kept, 1)
            vr = b"" if implicit else bytes(data[offset + 4 : offset + 6])
            if implicit or not (vr in _ANY_VR or b"AA" <= vr <= b"ZZ"):
                # Implicit VR; or, in explicit VR, bytes that name no VR: pydicom reads this one as implicit
                start, length = offset + 8, struct.unpack_from(order + "I", data, offset + 4)[0]
                sequence = _implicit_sequence(tag, length)
            elif vr in _ANY_VR:
                start, length = _explicit_length(data, offset, vr, order, "header")
                # PS3.5 6.2.2: a UN of undefined length is a sequence (its items' encoding found as any item's).
                sequence = vr == b"SQ" or (vr == b"UN" and length == _UNDEFINED_LENGTH)
            else:  # two capitals no standard names: pydicom gives it a 2-byte length
                start, length = offset + 8, struct.unpack_from(order + "H", data, offset + 6)[0]
                sequence = False
            undefined = length == _UNDEFINED_LENGTH
            if sequence:
                depth += 1
                if depth > limit:
                    raise InvalidInstance("too-deep", str(limit))
                inside = kept and (undefined or whole)
                open_.append((True, None if undefined else start + length, implicit, inside, False))
                offset = start
            elif undefined:  # encapsulated data: fragments are items, closed by a delimiter
                open_.append((False, None, implicit, False, True))
                offset = start
            elif start + length > size and open_:  # inside an item, past the end: what follows is counted
                offset = start
                break
            else:
                offset = start + length
    except InvalidInstance as problem:
        if problem.reason in ("too-deep", "too-many-elements"):
            raise
    except struct.error:
        pass
    # Stopped where it could not follow: what pydicom reads past here is not counted, so the rest must not
    # be able to hold more than is left (an item is at least 8 bytes, and counts thrice).
    if offset + 8 <= size and not held.take(_ITEM_WEIGHT * ((size - offset) // 8)):
        raise InvalidInstance("too-many-elements", str(limits.max_elements))


def _names_a_vr(two: bytes | bytearray | memoryview) -> bool:
    """Whether an item's first element reads as explicit VR: its VR bytes two capitals (as pydicom decides)."""
    return len(two) == 2 and 0x41 <= two[0] <= 0x5A and 0x41 <= two[1] <= 0x5A


# An item pydicom reads becomes a Dataset of its own: about three times an element's memory.
_ITEM_WEIGHT = 3
_ANY_VR = SHORT_VR_BYTES | LONG_VR_BYTES


def _implicit_sequence(tag: int, length: int) -> bool:
    """Implicit VR names no VR: the dictionary's, else what pydicom guesses while reading (an unknown tag of
    undefined length is read as a sequence; one of defined length is kept as bytes)."""
    try:
        return bool(dictionary_VR(tag) == "SQ")
    except KeyError:
        return length == _UNDEFINED_LENGTH


def _explicit_length(data: ByteSource, offset: int, vr: bytes | bytearray, order: str, part: str) -> tuple[int, int]:
    """Value offset and length of the explicit VR element at `offset` (PS3.5 7.1.2)."""
    if vr in SHORT_VR_BYTES:
        return offset + 8, struct.unpack_from(order + "H", data, offset + 6)[0]
    if vr not in LONG_VR_BYTES:
        raise InvalidInstance("not-dicom")
    if offset + 12 > len(data):
        raise InvalidInstance("truncated", part)
    length = struct.unpack_from(order + "I", data, offset + 8)[0]
    if length == _UNDEFINED_LENGTH and vr not in _MAY_BE_UNDEFINED:
        raise InvalidInstance("not-dicom")
    return offset + 12, length


def _check_character_set(data: ByteSource, offset: int, transfer_syntax: str) -> None:
    """Specific Character Set, converted by pydicom as it reads, must look like one (PS3.5 6.1.2.5.3)."""
    if transfer_syntax == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN:
        # Enough of the inflated stream to hold the first elements; the rest is pydicom's job. Fed only the
        # stream's first 128 KiB: given the rest too, zlib copied all it did not use into its unconsumed
        # tail, as much memory as the instance (300 MiB for a 300 MiB deflated instance).
        first = memoryview(data)[offset : offset + (2 << 16)]
        data, offset = zlib.decompressobj(-zlib.MAX_WBITS).decompress(first, 1 << 16), 0
    order = ">" if transfer_syntax == EXPLICIT_VR_BIG_ENDIAN else "<"
    while offset + 8 <= len(data):
        group, element = struct.unpack_from(order + "HH", data, offset)
        tag = group << 16 | element
        if tag > _SPECIFIC_CHARACTER_SET:
            return
        if transfer_syntax == IMPLICIT_VR_LITTLE_ENDIAN:
            start, length = offset + 8, struct.unpack_from("<I", data, offset + 4)[0]
        else:
            start, length = _explicit_length(data, offset, data[offset + 4 : offset + 6], order, "header")
        if length == _UNDEFINED_LENGTH:
            return
        if start + length > len(data):
            raise InvalidInstance("truncated", "header")
        if tag == _SPECIFIC_CHARACTER_SET and not _CHARSET.fullmatch(data[start : start + length].rstrip(b"\0")):
            raise InvalidInstance("not-dicom")
        offset = start + length


def _uid(ds: Dataset, keyword: str) -> str:
    value = _text(ds, keyword)
    if not value:
        raise InvalidInstance("missing-uid", keyword)
    if not is_uid_as_received(value):
        raise InvalidInstance("invalid-uid", keyword)
    return value


def _text(ds: Dataset, keyword: str) -> str:
    """The value of a top-level element as text, decoded without pydicom's validating conversion."""
    tag = Tag(keyword)
    if tag not in ds:
        return ""
    elem = ds.get_item(tag)
    if isinstance(elem, DataElement):  # already converted (the file meta group is read eagerly)
        value = elem.value
        if value is None:
            return ""
        return "\\".join(str(v) for v in value) if isinstance(value, MultiValue) else str(value).strip()
    if not elem.value:
        return ""
    if keyword in ("Rows", "Columns"):
        return _unsigned_short(elem, ds)
    if keyword in _CHARSET_DEPENDENT:
        terms = _text(ds, "SpecificCharacterSet").split("\\")
        return decode_bytes(elem.value, convert_encodings(terms), set()).strip(" \0")
    # UI and CS values are ASCII by definition (PS3.5 6.2); latin-1 never fails to decode.
    return elem.value.decode("latin-1").strip(" \0")


def _unsigned_short(elem: RawDataElement, ds: Dataset) -> str:
    raw = elem.value or b""
    if len(raw) != 2:
        return ""
    _, little_endian = ds.original_encoding
    return str(struct.unpack("<H" if little_endian else ">H", raw)[0])


def _check_complete(ds: Dataset, data: ByteSource, stopped_at: int, transfer_syntax: str) -> None:
    """Reject a file cut short, which pydicom reads without complaint up to where the bytes end.

    Either parsing stopped at the pixel data element, whose length must fit in `data`, or it ran
    to the end, where the last element must end exactly at the last byte. A cut exactly between
    two elements is caught for images only: Image Type or Rows (General Image, Image Pixel
    modules, PS3.3 C.7.6) promise pixel data, so an image without them was cut short.
    """
    if _pixel_data_at(data, stopped_at, transfer_syntax):
        _check_pixel_data_complete(data, stopped_at, transfer_syntax)
        return
    if "Rows" in ds or "ImageType" in ds:
        raise InvalidInstance("truncated", "PixelData")
    if not ds._dict:
        return
    last = ds._dict[max(ds._dict)]  # as read: get_item would read a deferred value
    if not isinstance(last, RawDataElement):  # empty, or only the eagerly read character set
        return
    deferred = last.value is None and last.length != _UNDEFINED_LENGTH  # over _DEFER_SIZE: skipped unread
    read = last.length if deferred else len(last.value or b"")
    end = last.value_tell + (read + 8 if last.length == _UNDEFINED_LENGTH else last.length)
    if read < last.length != _UNDEFINED_LENGTH or end != len(data):
        raise InvalidInstance("truncated", "header")


def _pixel_data_at(data: ByteSource, offset: int, transfer_syntax: str) -> bool:
    if offset + 8 > len(data):
        return False
    order = ">HH" if transfer_syntax == EXPLICIT_VR_BIG_ENDIAN else "<HH"
    group, element = struct.unpack_from(order, data, offset)
    return (group << 16 | element) in _PIXEL_TAGS


def _check_pixel_data_complete(data: ByteSource, offset: int, transfer_syntax: str) -> None:
    """The pixel data element at `offset`, which a header-only read skipped, must end within `data`."""
    if transfer_syntax == IMPLICIT_VR_LITTLE_ENDIAN:
        start, length = offset + 8, struct.unpack_from("<I", data, offset + 4)[0]
    else:
        order = ">" if transfer_syntax == EXPLICIT_VR_BIG_ENDIAN else "<"
        start, length = _explicit_length(data, offset, data[offset + 4 : offset + 6], order, "PixelData")
    if length == _UNDEFINED_LENGTH:
        _check_fragments_complete(data, start)
    elif start + length > len(data):
        raise InvalidInstance("truncated", "PixelData")


def _check_fragments_complete(data: ByteSource, offset: int) -> None:
    """Walk encapsulated items to the Sequence Delimitation Item (PS3.5 A.4); always little endian."""
    while offset + 8 <= len(data):
        tag, length = data[offset : offset + 4], struct.unpack_from("<I", data, offset + 4)[0]
        if tag == _SEQUENCE_DELIMITER:
            return
        if tag != _ITEM or length == _UNDEFINED_LENGTH:
            raise InvalidInstance("not-dicom")
        offset += 8 + length
    raise InvalidInstance("truncated", "PixelData")
