"""Inputs whose every value that could reach a log is a canary: text in each text-bearing VR, UIDs with a
canary digit run, a bogus character set, private elements, and the malformed inputs that take the fault
paths (unknown VR, unknown transfer syntax, deflate bomb, truncation, not DICOM at all).

`CANARIES` are what a log must never contain; text canaries are matched case-insensitively."""

from __future__ import annotations

import re
import struct
import zlib
from io import BytesIO

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage

from services.common.dicom.part10 import dataset_to_bytes

TEXT = "QZXCANARY"
UID_DIGITS = "271828182845"
DATE = "18450927"
TIME = "182845.2718"
CHARSET = "QZXCSET"  # a SpecificCharacterSet no one knows
UID_ROOT = f"1.2.826.0.1.3680043.10.543.{UID_DIGITS}"
CANARIES = (TEXT, UID_DIGITS, DATE, TIME, CHARSET)
_PATTERN = re.compile("|".join(re.escape(c) for c in CANARIES), re.IGNORECASE)
DEFLATED = "1.2.840.10008.1.2.1.99"
ZERO_RUN = 16 * 1024 * 1024


def lines_with_canaries(log: str, limit: int = 5) -> list[str]:
    """The first `limit` lines of a log that carry a canary."""
    return [line for line in log.splitlines() if _PATTERN.search(line)][:limit]


def uid(*parts: int) -> str:
    return ".".join([UID_ROOT, *map(str, parts)])


def _text(vr_max: int = 64) -> str:
    return f"{TEXT} value"[:vr_max]


def canary_dataset(study: int, n: int, charset: str = "ISO_IR 192", burned_in: str = "NO") -> Dataset:
    """An 8x8 MR image; every attribute a log could quote holds a canary."""
    ds = Dataset()
    ds.SpecificCharacterSet = charset
    ds.ImageType = ["ORIGINAL", "PRIMARY", TEXT]
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = uid(study, 2, n)
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = DATE
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = TIME
    ds.AcquisitionDateTime = DATE + TIME.replace(".", "")[:6]
    ds.AccessionNumber = TEXT  # SH
    ds.Modality = "MR"
    ds.Manufacturer = f"{TEXT} Medical"  # LO
    ds.InstitutionName = f"{TEXT} Hospital"
    ds.InstitutionAddress = f"1 {TEXT} Road, {TEXT}ton"  # ST
    ds.ReferringPhysicianName = f"{TEXT}^Referrer"  # PN
    ds.StationName = TEXT[:16]  # SH
    ds.StudyDescription = f"{TEXT} study"
    ds.SeriesDescription = f"{TEXT} series"
    ds.InstitutionalDepartmentName = f"{TEXT} radiology"
    ds.PerformingPhysicianName = f"{TEXT}^Performer"
    ds.OperatorsName = f"{TEXT}^Operator"
    ds.RetrieveURL = f"https://{TEXT.lower()}.example/wado"  # UR
    ds.PatientName = f"{TEXT}^Ünïcødé^Пациент"
    ds.PatientID = f"{TEXT}-{UID_DIGITS}"  # LO
    ds.IssuerOfPatientID = TEXT
    ds.PatientBirthDate = DATE
    ds.PatientSex = "O"
    ds.PatientAge = "071Y"  # AS
    ds.OtherPatientIDsSequence = Sequence([Dataset()])
    ds.OtherPatientIDsSequence[0].PatientID = f"{TEXT}-other"
    ds.OtherPatientIDsSequence[0].IssuerOfPatientID = TEXT
    ds.PatientAddress = f"2 {TEXT} Street"
    ds.PatientTelephoneNumbers = f"{UID_DIGITS}"
    ds.Occupation = TEXT
    ds.AdditionalPatientHistory = f"{TEXT} history " * 4  # LT
    ds.PatientComments = f"{TEXT} comments"  # LT
    ds.BodyPartExamined = TEXT[:16]  # CS
    ds.ProtocolName = f"{TEXT} protocol"
    ds.DeviceSerialNumber = TEXT
    ds.StudyInstanceUID = uid(study)
    ds.SeriesInstanceUID = uid(study, 1)
    ds.FrameOfReferenceUID = uid(study, 3)
    ds.StudyID = TEXT[:16]  # SH
    ds.SeriesNumber = 1
    ds.InstanceNumber = n
    ds.ImageComments = f"{TEXT} image comments"  # LT
    ds.RequestAttributesSequence = Sequence([Dataset()])
    ds.RequestAttributesSequence[0].RequestedProcedureID = TEXT
    ds.RequestAttributesSequence[0].ScheduledProcedureStepDescription = f"{TEXT} step"
    ds.ContentSequence = Sequence([Dataset()])
    ds.ContentSequence[0].TextValue = f"{TEXT} unlimited text " * 8  # UT
    ds.ContentSequence[0].ValueType = "TEXT"
    ds.BurnedInAnnotation = burned_in
    ds.add_new(0x00110010, "LO", f"{TEXT} CREATOR")  # private creator
    ds.add_new(0x00111001, "LO", f"{TEXT} private")
    ds.add_new(0x00111002, "UT", f"{TEXT} private text")
    ds.add_new(0x00111003, "UN", f"{TEXT} raw bytes!".encode())
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = 8
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = (np.arange(64, dtype=np.uint16) * 16).tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def part10(ds: Dataset) -> bytes:
    return dataset_to_bytes(ds)


def _element(group: int, element: int, vr: bytes, value: bytes) -> bytes:
    if len(value) % 2:
        value += b" "
    if vr in (b"OB", b"OW", b"UN", b"UT", b"SQ", b"UC", b"UR", b"OD", b"OF", b"OL", b"OV"):
        return struct.pack("<HH2sHI", group, element, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", group, element, vr, len(value)) + value


def _meta(sop_class: str, sop_uid: str, transfer_syntax: str) -> bytes:
    body = b"".join(
        [
            _element(0x0002, 0x0001, b"OB", b"\x00\x01"),
            _element(0x0002, 0x0002, b"UI", sop_class.encode() + b"\0" * (len(sop_class) % 2)),
            _element(0x0002, 0x0003, b"UI", sop_uid.encode() + b"\0" * (len(sop_uid) % 2)),
            _element(0x0002, 0x0010, b"UI", transfer_syntax.encode() + b"\0" * (len(transfer_syntax) % 2)),
        ]
    )
    return bytes(128) + b"DICM" + _element(0x0002, 0x0000, b"UL", struct.pack("<I", len(body))) + body


def _body(ds: Dataset) -> bytes:
    """The data set alone, explicit VR little endian."""
    buffer = BytesIO()
    plain = Dataset(ds)  # without file_meta
    write_dataset(_Writer(buffer), plain)  # type: ignore[arg-type]
    return buffer.getvalue()


class _Writer:
    """pydicom's write_dataset wants a DicomIO-like target with the encoding flags."""

    def __init__(self, buffer: BytesIO) -> None:
        from pydicom.filebase import DicomFileLike

        self._file = DicomFileLike(buffer)
        self._file.is_little_endian = True
        self._file.is_implicit_VR = False

    def __getattr__(self, name: str) -> object:
        return getattr(self._file, name)


def with_unknown_vr(study: int) -> bytes:
    """A canary instance followed by an element whose VR is no VR at all."""
    ds = canary_dataset(study, 1)
    return part10(ds) + _element(0x7FE1, 0x0010, b"QZ", f"{TEXT} bad vr".encode())


def with_bad_value_lengths(study: int) -> bytes:
    """A canary instance whose last element claims more bytes than there are."""
    return part10(canary_dataset(study, 1)) + struct.pack("<HH2sH", 0x7FE1, 0x0010, b"LO", 0xFFF0) + TEXT.encode()


def unknown_transfer_syntax(study: int) -> bytes:
    """The canary data set under a transfer syntax UID (itself a canary) nobody defines."""
    ds = canary_dataset(study, 1)
    return _meta(MRImageStorage, uid(study, 2, 1), uid(9, 9)) + _body(ds)


def deflate_bomb(study: int, inflated_bytes: int) -> bytes:
    """Deflated explicit VR little endian: canary elements, then an OB value of `inflated_bytes` zeros."""
    ds = canary_dataset(study, 1)
    del ds.PixelData
    head = _body(ds) + struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, inflated_bytes)
    deflater = zlib.compressobj(9, zlib.DEFLATED, -15)
    start = deflater.compress(head) + deflater.flush(zlib.Z_FULL_FLUSH)
    # A full flush leaves no history behind, so one compressed run of zeros can be repeated as is.
    run = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = run.compress(bytes(ZERO_RUN)) + run.flush(zlib.Z_FULL_FLUSH)
    chunks = [start, block * -(-inflated_bytes // ZERO_RUN), zlib.compressobj(9, zlib.DEFLATED, -15).flush()]
    return _meta(MRImageStorage, uid(study, 2, 1), DEFLATED) + b"".join(chunks)


def deeply_nested(study: int, depth: int) -> Dataset:
    """A canary instance with sequences nested `depth` deep, a canary at the bottom."""
    ds = canary_dataset(study, 1)
    inner = Dataset()
    inner.TextValue = f"{TEXT} deep"
    for _ in range(depth):
        outer = Dataset()
        outer.ContentSequence = Sequence([inner])
        inner = outer
    ds.ContentSequence = inner.ContentSequence
    return ds


def truncated(study: int) -> bytes:
    data = part10(canary_dataset(study, 1))
    return data[: len(data) // 2]


def not_dicom() -> bytes:
    return f"{TEXT} this is not DICOM {UID_DIGITS} {DATE}".encode() * 4
