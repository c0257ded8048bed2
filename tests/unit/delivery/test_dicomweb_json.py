"""UID checks, QIDO-RS results from the delivered index and metadata from headers (no sockets)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import BinaryIO, cast

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from services.common.dicom.part10 import dataset_to_bytes
from services.common.dicom.synthetic import generate_study
from services.common.dicom.uids import is_conformant_uid
from services.delivery.delivered import DeliveredInstance
from services.delivery.dicomweb_json import (
    by_series,
    header_json,
    instance_result,
    matches,
    metadata_for,
    series_result,
    study_result,
    wanted_values,
)

BASE = "https://imx.example/dicomweb"


@pytest.mark.parametrize("uid", ["1.2.840.10008.1.2.1", "2.25.0", "0", "1.0.3", "1" * 64])
def test_valid_uids(uid: str) -> None:
    assert is_conformant_uid(uid)


@pytest.mark.parametrize(
    "uid",
    ["", "1..2", ".1", "1.", "1.02", "1.2a", "1" * 65, "../etc", "1.2/3", "1.2%2F", " 1.2", "1.2\n", "\u0661.\u0662"],
)
def test_invalid_uids(uid: str) -> None:
    assert not is_conformant_uid(uid)


@given(st.text(max_size=80))
def test_a_valid_uid_holds_only_digits_and_dots(text: str) -> None:
    if is_conformant_uid(text):
        assert set(text) <= set("0123456789.") and len(text) <= 64


def _item(series: str, sop: str, modality: str = "CT") -> DeliveredInstance:
    return DeliveredInstance(
        partner_id="p",
        study_uid="1.2.3",
        series_uid=series,
        sop_uid=sop,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        sha256="0" * 64,
        size=10,
        delivery_id="d",
        modality=modality,
    )


ITEMS = [_item("1.2.3.1", "1.2.3.1.1"), _item("1.2.3.1", "1.2.3.1.2"), _item("1.2.3.2", "1.2.3.2.1", "SR")]


def test_study_result_counts_series_and_instances() -> None:
    result = study_result("1.2.3", ITEMS, BASE)
    assert result["0020000D"] == {"vr": "UI", "Value": ["1.2.3"]}
    assert result["00080061"] == {"vr": "CS", "Value": ["CT", "SR"]}
    assert result["00201206"]["Value"] == [2]
    assert result["00201208"]["Value"] == [3]
    assert result["00081190"]["Value"] == [f"{BASE}/studies/1.2.3"]


def test_series_and_instance_results() -> None:
    groups = by_series(reversed(ITEMS))
    assert list(groups) == ["1.2.3.1", "1.2.3.2"]
    series = series_result("1.2.3", "1.2.3.1", groups["1.2.3.1"], BASE)
    assert series["0020000E"]["Value"] == ["1.2.3.1"]
    assert series["00201209"]["Value"] == [2]
    assert series["00080060"]["Value"] == ["CT"]
    instance = instance_result(ITEMS[0], BASE)
    assert instance["00080018"]["Value"] == ["1.2.3.1.1"]
    assert instance["00080016"]["Value"] == ["1.2.840.10008.5.1.4.1.1.2"]
    assert instance["00083002"]["Value"] == ["1.2.840.10008.1.2.1"]
    assert instance["00081190"]["Value"] == [f"{BASE}/studies/1.2.3/series/1.2.3.1/instances/1.2.3.1.1"]


def test_matching_is_exact_and_takes_a_list_of_uids_by_comma_or_backslash() -> None:
    assert matches(ITEMS[0], {"modality": wanted_values("CT")})
    assert not matches(ITEMS[2], {"modality": wanted_values("CT")})
    assert matches(ITEMS[2], {"sop_uid": wanted_values("9.9\\1.2.3.2.1")})
    assert matches(ITEMS[2], {"sop_uid": wanted_values("9.9,1.2.3.2.1")})  # PS3.18's UID list matching
    assert not matches(ITEMS[2], {"sop_uid": wanted_values("1.2.3.2")})  # exact, not a prefix


def test_metadata_is_the_header_without_pixel_data(tmp_path: Path) -> None:
    dataset = next(generate_study(7, "CT", 1, "src"))
    path = tmp_path / "ct.dcm"
    path.write_bytes(dataset_to_bytes(dataset))
    metadata = header_json(path)
    assert metadata is not None
    assert metadata["00080018"]["Value"] == [str(dataset.SOPInstanceUID)]
    assert metadata["00280010"]["Value"] == [dataset.Rows]
    assert "7FE00010" not in metadata
    assert not any("InlineBinary" in a and len(a["InlineBinary"]) > 2048 for a in metadata.values())


def test_an_unreadable_object_gets_the_identifiers_on_record(tmp_path: Path) -> None:
    path = tmp_path / "junk"
    path.write_bytes(b"not dicom at all")
    metadata = metadata_for(ITEMS[0], path)
    assert metadata["00080018"]["Value"] == ["1.2.3.1.1"]
    assert metadata["0020000E"]["Value"] == ["1.2.3.1"]


def test_an_object_damaged_in_place_gets_the_identifiers_on_record(tmp_path: Path) -> None:
    """A header pydicom refuses with an error of another type (an unknown VR: NotImplementedError) was
    raised inside a study's metadata after its 200 was sent: the JSON cut off, the other instances lost."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = "1.2.840.10008.5.1.4.1.1.2", "1.2.3.1.1", "CT"
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    data = buffer.getvalue()
    at = data.index(b"CS")  # Modality's VR, damaged to one no standard names
    path = tmp_path / "damaged"
    path.write_bytes(data[:at] + b"ZZ" + data[at + 2 :])
    assert metadata_for(ITEMS[0], path)["00080018"]["Value"] == ["1.2.3.1.1"]


def test_values_json_cannot_hold_are_written_as_the_model_allows(tmp_path: Path) -> None:
    """json.dumps wrote a bare NaN for them: not JSON, and a strict partner refused the study's metadata."""
    dataset = next(generate_study(7, "CT", 1, "src"))
    dataset.add_new(0x00180050, "DS", "NaN")  # Slice Thickness
    dataset.add_new(0x00189327, "FD", float("inf"))  # Table Position
    dataset.add_new(0x00189306, "FD", [1.5, float("-inf")])  # Single Collimation Width
    path = tmp_path / "ct.dcm"
    path.write_bytes(dataset_to_bytes(dataset))
    metadata = header_json(path)
    assert metadata is not None
    assert metadata["00189327"]["Value"] == ["inf"] and metadata["00189306"]["Value"] == [1.5, "-inf"]
    assert metadata["00180050"]["Value"] == [None]
    assert json.loads(json.dumps(metadata, allow_nan=False)) == metadata


def test_a_large_value_is_left_out_unread(tmp_path: Path) -> None:
    """An encapsulated document (or a 3D model) of hundreds of MiB was read whole for each metadata
    request, ~40 at once on delivery's threads: its memory is the value's size."""
    dataset = next(generate_study(7, "CT", 1, "src"))
    dataset.add_new(0x00420011, "OB", bytes(4 * 1024 * 1024))  # Encapsulated Document
    path = tmp_path / "doc.dcm"
    path.write_bytes(dataset_to_bytes(dataset))

    class Counted(io.FileIO):
        read_bytes = 0

        def read(self, size: int = -1) -> bytes:
            data = super().read(size)
            Counted.read_bytes += len(data)
            return data

    with Counted(path) as handle:
        metadata = header_json(cast(BinaryIO, handle))
    assert metadata is not None and "00420011" not in metadata
    assert metadata["00080018"]["Value"] == [str(dataset.SOPInstanceUID)]
    assert Counted.read_bytes < 1024 * 1024, "the document's 4 MiB were read"


def test_a_large_sequence_or_text_is_kept(tmp_path: Path) -> None:
    """Deferred for their size like bulk data, they were dropped too: a de-identified copy's sequences and
    an enhanced object's functional groups went missing from its metadata."""
    from pydicom.dataset import Dataset

    dataset = next(generate_study(7, "CT", 1, "src"))
    items = []
    for n in range(40):
        item = Dataset()
        item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = "1.2.840.10008.5.1.4.1.1.2", f"1.2.3.{n}"
        items.append(item)
    dataset.ReferencedImageSequence = items
    dataset.ImageComments = "c" * 3000
    path = tmp_path / "ct.dcm"
    path.write_bytes(dataset_to_bytes(dataset))
    metadata = header_json(path)
    assert metadata is not None
    assert len(metadata["00081140"]["Value"]) == 40 and metadata["00204000"]["Value"] == ["c" * 3000]
