"""Malformed inputs for `make chaos`: a deterministic stream (seed, index) of broken DICOM, each kind
aimed at one way a parser can be made to crash, hang or eat memory.

Every input is derived from a small valid MR instance with UIDs of its own (so what it became can be
found again by its SOP Instance UID) and then broken:

- truncated: the file cut anywhere after the preamble
- bad-vr: the VR of one explicit-VR element replaced by bytes that are no VR
- deflate-bomb: a Deflated Explicit VR Little Endian body (PS3.5 A.5) that inflates to MiBs or GiBs
- deep-nesting: sequences nested thousands deep (PS3.5 7.5, undefined lengths)
- huge-length: an element claiming far more bytes than follow, or an undefined length where none is allowed
- bad-preamble: "DICM" missing or wrong, the file meta group length lying, no preamble at all
- garbage: random bytes
- wrong-transfer-syntax: a body encoded otherwise than its transfer syntax says, or an unknown syntax

`part10` is the file as STOW-RS sends it; `dataset` and `transfer_syntax` are what a C-STORE carries
(the body after the file meta, on a presentation context of that syntax).
"""

from __future__ import annotations

import random
import struct
import zlib
from dataclasses import dataclass
from functools import cache
from io import BytesIO

from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

KINDS = (
    "truncated",
    "bad-vr",
    "deflate-bomb",
    "deep-nesting",
    "huge-length",
    "bad-preamble",
    "garbage",
    "wrong-transfer-syntax",
)
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
MIB = 1024 * 1024
# Inflated sizes of the bombs and how often each comes: mostly small, some near ingest's limit
# (services/common/dicom/header.py InputLimits.max_inflated_bytes, 1 GiB), some far over it.
BOMB_SIZES = ((4 * MIB, 60), (64 * MIB, 30), (768 * MIB, 5), (3072 * MIB, 5))
_BOMB_CHUNK = 16 * MIB


@dataclass(frozen=True)
class Malformed:
    index: int
    kind: str
    sop_class: str
    sop_uid: str
    part10: bytes
    dataset: bytes
    transfer_syntax: str


def uid_for(seed: int, index: int, what: str) -> str:
    """A 2.25 UID, the same for the same (seed, index, what)."""
    value = int.from_bytes(random.Random(f"{seed}/{index}/{what}").randbytes(15), "big")
    return f"2.25.{value}"


def base_dataset(seed: int, index: int) -> Dataset:
    """A small valid MR instance (16x16 pixels) with UIDs of its own."""
    ds = Dataset()
    ds.SOPClassUID = MR_IMAGE_STORAGE
    ds.SOPInstanceUID = uid_for(seed, index, "sop")
    ds.StudyDate, ds.StudyTime = "20260101", "120000"
    ds.Modality = "MR"
    ds.PatientName, ds.PatientID = "CHAOS^FUZZ", f"FUZZ{index:06d}"
    ds.StudyInstanceUID = uid_for(seed, index // 50, "study")
    ds.SeriesInstanceUID = uid_for(seed, index // 10, "series")
    ds.StudyID, ds.SeriesNumber, ds.InstanceNumber = "1", 1, index % 10_000 + 1
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows = ds.Columns = 16
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = bytes(range(256)) * 2
    ds["PixelData"].VR = "OW"
    return ds


def encode_body(ds: Dataset, syntax: str) -> bytes:
    """The data set alone (no preamble, no file meta) in `syntax` (not deflated)."""
    out = BytesIO()
    little = syntax != ExplicitVRBigEndian
    implicit = syntax == ImplicitVRLittleEndian
    ds.save_as(out, implicit_vr=implicit, little_endian=little)
    return out.getvalue()


def file_meta_bytes(sop_class: str, sop_uid: str, syntax: str) -> bytes:
    """Preamble, "DICM" and the file meta group (PS3.10 7.1)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = UID(sop_class), UID(sop_uid)
    meta.TransferSyntaxUID = UID(syntax)
    meta.ImplementationClassUID = UID("1.2.826.0.1.3680043.10.1453.99")
    group = DicomBytesIO()
    write_file_meta_info(group, meta, enforce_standard=True)
    return b"\0" * 128 + b"DICM" + group.getvalue()


def _explicit_element(group: int, element: int, vr: bytes, value: bytes) -> bytes:
    if vr in (b"OB", b"OW", b"SQ", b"UN", b"UT", b"UC", b"UR", b"OF", b"OD", b"OL", b"OV"):
        return struct.pack("<HH2sHI", group, element, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", group, element, vr, len(value)) + value


@cache
def _zeros_chunk() -> bytes:
    """Raw deflate blocks inflating to `_BOMB_CHUNK` zero bytes, ending on a full flush so copies of it
    can follow one another."""
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    return packer.compress(bytes(_BOMB_CHUNK)) + packer.flush(zlib.Z_FULL_FLUSH)


def deflate_bomb_body(header: bytes, inflated_size: int) -> bytes:
    """Deflated body: `header` (explicit VR LE elements) then a private OB element of zeros, so the
    whole inflates to about `inflated_size` bytes."""
    chunks = max(1, inflated_size // _BOMB_CHUNK)
    bulk = chunks * _BOMB_CHUNK
    head = header + struct.pack("<HH2sHI", 0x0009, 0x1010, b"OB", 0, bulk)
    creator = _explicit_element(0x0009, 0x0010, b"LO", b"IMX CHAOS ")
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    start = packer.compress(creator_first(head, creator)) + packer.flush(zlib.Z_FULL_FLUSH)
    end = zlib.compressobj(9, zlib.DEFLATED, -15).flush(zlib.Z_FINISH)
    return start + _zeros_chunk() * chunks + end


def creator_first(head: bytes, creator: bytes) -> bytes:
    """Private creator (0009,0010) goes before its block's elements (0009,1010)."""
    return head[:-12] + creator + head[-12:]


def deep_nesting(depth: int) -> bytes:
    """Content Sequence (0040,A730) nested `depth` deep, undefined lengths throughout."""
    opening = struct.pack("<HH2sHI", 0x0040, 0xA730, b"SQ", 0, 0xFFFFFFFF) + struct.pack(
        "<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF
    )
    closing = struct.pack("<HHI", 0xFFFE, 0xE00D, 0) + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    return opening * depth + closing * depth


def _split_before_pixels(body: bytes) -> tuple[bytes, bytes]:
    at = body.rfind(b"\xe0\x7f\x10\x00")
    return (body[:at], body[at:]) if at > 0 else (body, b"")


def malformed_input(seed: int, index: int) -> Malformed:
    """The `index`-th input of the stream `seed`; the same arguments give the same bytes."""
    rng = random.Random(f"chaos/{seed}/{index}")
    kind = KINDS[rng.randrange(len(KINDS))]
    ds = base_dataset(seed, index)
    sop_class, sop_uid = str(ds.SOPClassUID), str(ds.SOPInstanceUID)
    syntax = ExplicitVRLittleEndian
    body = encode_body(ds, syntax)
    if kind == "truncated":
        whole = file_meta_bytes(sop_class, sop_uid, syntax) + body
        part10, dataset = whole[: rng.randrange(132, len(whole) - 1)], body[: rng.randrange(1, len(body) - 1)]
        return Malformed(index, kind, sop_class, sop_uid, part10, dataset, syntax)
    if kind == "bad-vr":
        broken = bytearray(body)
        offsets = [
            i for i in range(0, len(body) - 8) if body[i + 4 : i + 6] in (b"PN", b"LO", b"DA", b"CS", b"US", b"UI")
        ]
        at = rng.choice(offsets)
        broken[at + 4 : at + 6] = rng.choice([b"ZZ", b"\x00\x00", b"ob", b"\xff\xfe", b"  "])
        body = bytes(broken)
    elif kind == "deflate-bomb":
        size = rng.choices([s for s, _ in BOMB_SIZES], weights=[w for _, w in BOMB_SIZES])[0]
        header, _ = _split_before_pixels(body)
        syntax = DeflatedExplicitVRLittleEndian
        body = deflate_bomb_body(header, size)
    elif kind == "deep-nesting":
        header, pixels = _split_before_pixels(body)
        body = header + deep_nesting(rng.choice([64, 1_000, 10_000, 100_000])) + pixels
    elif kind == "huge-length":
        header, _ = _split_before_pixels(body)
        claim = rng.choice([0xFFFFFFF0, 0x7FFFFFFF, 0x10000000, 0xFFFFFFFF])
        tail = struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, claim) + b"\0" * rng.randrange(0, 64)
        if claim == 0xFFFFFFFF:  # undefined length on a non-encapsulated OB: no delimiter ever comes
            tail = struct.pack("<HH2sHI", 0x0009, 0x1010, b"OB", 0, claim) + b"\x01" * 32
        body = header + tail
    elif kind == "bad-preamble":
        meta = bytearray(file_meta_bytes(sop_class, sop_uid, syntax))
        variant = rng.randrange(4)
        if variant == 0:
            meta[128:132] = b"DICN"
        elif variant == 1:
            meta = meta[132:]  # no preamble and no "DICM": the meta group first
        elif variant == 2:
            struct.pack_into("<I", meta, 140, rng.choice([0, 3, 0xFFFFFFFF, 100_000]))  # group length
        else:
            meta[:128] = rng.randbytes(128)
            meta[128:132] = rng.randbytes(4)
        return Malformed(index, kind, sop_class, sop_uid, bytes(meta) + body, bytes(meta[-64:]) + body, syntax)
    elif kind == "garbage":
        data = rng.randbytes(rng.choice([0, 1, 16, 131, 132, 4096, 65536]))
        if data and rng.random() < 0.5:
            data = b"\0" * 128 + b"DICM" + data
        return Malformed(index, kind, sop_class, sop_uid, data, data, syntax)
    elif kind == "wrong-transfer-syntax":
        variant = rng.randrange(3)
        if variant == 0:
            body = encode_body(ds, ImplicitVRLittleEndian)  # said: explicit
        elif variant == 1:
            body = encode_body(ds, ExplicitVRBigEndian)  # said: little endian
        else:
            part10 = file_meta_bytes(sop_class, sop_uid, "1.2.3.4.5.6.7") + body
            return Malformed(index, kind, sop_class, sop_uid, part10, body, syntax)
        return Malformed(
            index, kind, sop_class, sop_uid, file_meta_bytes(sop_class, sop_uid, syntax) + body, body, syntax
        )
    return Malformed(index, kind, sop_class, sop_uid, file_meta_bytes(sop_class, sop_uid, syntax) + body, body, syntax)
