"""Instances for the engine's tests: a small CT, and one with a value in every Table E.1-1 attribute."""

from __future__ import annotations

import csv
import re
from io import BytesIO
from pathlib import Path

import numpy as np
from pydicom.datadict import DicomDictionary
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.sequence import Sequence
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian

TABLE = Path(__file__).resolve().parents[3] / "services" / "deid" / "data" / "ps3.15-table-e1-1.csv"
KEY = b"test-key-0123456789abcdef-000000"
OTHER_KEY = b"other-key-0123456789abcdef-11111"
BIRTH_DATE = "19500607"
# An unlisted sequence that holds a nested copy of every attribute.
NESTING_SEQUENCE = 0x52009230  # Per-frame Functional Groups Sequence


def to_bytes(ds: Dataset, syntax: str = ExplicitVRLittleEndian) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(str(ds.get("SOPClassUID", CTImageStorage)))
    meta.MediaStorageSOPInstanceUID = UID(str(ds.get("SOPInstanceUID", "1.2.3.4")))
    meta.TransferSyntaxUID = UID(syntax)
    meta.SourceApplicationEntityTitle = "HOSPITALPACS"
    ds.file_meta = meta
    buffer = BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def ct_dataset(study: str = "1.2.826.0.1.3680043.99.1", instance: int = 1, patient: str = "PID0012345") -> Dataset:
    """A small, valid CT image with PHI in the usual places, a private block and nested references."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = f"{study}.3.{instance}"
    ds.StudyDate, ds.SeriesDate, ds.ContentDate = "20240315", "20240315", "20240315"
    ds.StudyTime, ds.ContentTime = "101500", "101512.250"
    ds.AcquisitionDateTime = "20240315101510.000000"
    ds.AccessionNumber = f"ACC{patient[-5:]}9"
    ds.Modality = "CT"
    ds.Manufacturer = "ACME"
    ds.ManufacturerModelName = "Scanner 9000"
    ds.InstitutionName = "Northwick Park Hospital"
    ds.ReferringPhysicianName = "Hughes^Annabel^^Dr"
    ds.StationName = "NWPCT01"
    ds.StudyDescription = "CT HEAD for Thistlewood"
    ds.SeriesDescription = "Axial 5mm"
    ds.OperatorsName = "Baker^Tomasz"
    ds.PatientName = "Thistlewood^Margery"
    ds.PatientID = patient
    ds.PatientBirthDate = BIRTH_DATE
    ds.PatientSex = "F"
    ds.PatientAge = "073Y"
    ds.PatientAddress = "12 Acacia Avenue, Wembley HA9 7AB"
    ds.OtherPatientIDsSequence = Sequence([_item(PatientID="9434765919", IssuerOfPatientID="NHS")])
    ds.BodyPartExamined = "HEAD"
    ds.SliceThickness = "5.0"
    ds.DeviceSerialNumber = "SN-88231"
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = f"{study}.2"
    ds.StudyID = "55821"
    ds.SeriesNumber, ds.InstanceNumber = 1, instance
    ds.FrameOfReferenceUID = f"{study}.4"
    ds.PositionReferenceIndicator = ""
    ds.ImagePositionPatient = ["0", "0", str(instance)]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.ReferencedImageSequence = Sequence(
        [_item(ReferencedSOPClassUID=CTImageStorage, ReferencedSOPInstanceUID=f"{study}.3.{instance + 1}")]
    )
    ds.RequestAttributesSequence = Sequence([_item(RequestedProcedureID="RP12345", AccessionNumber=ds.AccessionNumber)])
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows = ds.Columns = 16
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleIntercept, ds.RescaleSlope = "-1024", "1"
    ds.KVP = "120"
    ds.BurnedInAnnotation = "NO"
    block = ds.private_block(0x0019, "ACME PRIVATE", create=True)
    block.add_new(0x10, "LO", "Thistlewood")
    block.add_new(0x11, "DS", "1.5")
    ds.PixelData = (np.arange(256, dtype="<u2") * 3).tobytes()
    return ds


def _item(**values: object) -> Dataset:
    item = Dataset()
    for keyword, value in values.items():
        setattr(item, keyword, value)
    return item


def table_rows() -> list[dict[str, str]]:
    with TABLE.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def concrete_tags() -> dict[int, dict[str, str]]:
    """Table rows with a literal tag that pydicom's dictionary knows (so their VR is known)."""
    rows = {}
    for row in table_rows():
        match = re.fullmatch(r"\(([0-9A-F]{4}),([0-9A-F]{4})\)", row["tag"])
        if match:
            tag = int(match.group(1), 16) << 16 | int(match.group(2), 16)
            # Command (0000) and file meta (0002) elements cannot appear in a dataset body.
            if tag in DicomDictionary and tag >> 16 not in (0x0000, 0x0002):
                rows[tag] = row
    return rows


def vr_for(tag: int) -> str:
    return DicomDictionary[tag][0].split(" ")[0]


def _letters(tag: int) -> str:
    return "".join("ABCDEFGHIJKLMNOP"[int(digit, 16)] for digit in f"{tag:08X}")


def value_for(tag: int, vr: str) -> object:
    """A distinct, valid value per tag, so that any copy of it in the output can be traced."""
    letters = _letters(tag)
    if tag == 0x00100030:
        return BIRTH_DATE
    return {
        "AE": f"AE{letters[:12]}",
        "AS": "045Y",
        "AT": 0x00100010,
        "CS": f"C{letters[:14]}",
        "DA": "20200102",
        "DS": "1.5",
        "DT": "20200102030405",
        "FD": 1.5,
        "FL": 1.5,
        "IS": "7",
        "LO": f"V{letters}",
        "LT": f"V{letters} long text",
        "OB": b"\x01\x02",
        "OD": b"\x01" * 8,
        "OF": b"\x01" * 4,
        "OL": b"\x01" * 4,
        "OV": b"\x01" * 8,
        "OW": b"\x01\x02",
        "PN": f"{letters}^{letters[::-1]}",
        "SH": f"V{letters}",
        "SL": 1,
        "SS": 1,
        "ST": f"V{letters} short text",
        "SV": 1,
        "TM": "030405",
        "UC": f"V{letters}",
        "UI": f"1.2.826.0.1.3680043.99.{tag}",
        "UL": 1,
        "UN": b"\x01\x02",
        "UR": "http://example.invalid/a",
        "US": 1,
        "UT": f"V{letters} unlimited",
        "UV": 1,
    }[vr]


def code_item(tag: int) -> Dataset:
    return _item(CodeValue=f"C{tag & 0xFFFF:04X}", CodingSchemeDesignator="99TEST", CodeMeaning="Test code")


def every_attribute_dataset() -> Dataset:
    """A value in every concrete Table E.1-1 attribute, plus a nested copy of the non-sequences."""
    ds = Dataset()
    nested = Dataset()
    for tag in concrete_tags():
        vr = vr_for(tag)
        if vr == "SQ":
            ds.add_new(tag, "SQ", Sequence([code_item(tag)]))
            continue
        ds.add_new(tag, vr, value_for(tag, vr))
        nested.add_new(tag, vr, value_for(tag, vr))
    ds.add_new(NESTING_SEQUENCE, "SQ", Sequence([nested]))
    # Repeating groups of Table E.1-1: curves, overlays (with their other attributes).
    ds.add_new(0x50003000, "OB", b"\x01\x02")
    ds.add_new(0x60000010, "US", 16)
    ds.add_new(0x60003000, "OW", b"\x00" * 32)
    ds.add_new(0x60004000, "LT", "overlay comment")
    ds.add_new(0x00080016, "UI", CTImageStorage)
    return ds
