"""Synthetic studies: deterministic, valid Part 10, and carrying the PHI they claim to carry."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from pydicom.uid import ExplicitVRLittleEndian

from services.common.dicom.part10 import dataset_to_bytes, read_dataset
from services.common.dicom.synthetic import (
    MODALITIES,
    Modality,
    generate_study,
    plan_study,
    study_instances,
    write_demo_data,
)

SOP_CLASSES = {
    "CT": "1.2.840.10008.5.1.4.1.1.2",
    "MR": "1.2.840.10008.5.1.4.1.1.4",
    "CR": "1.2.840.10008.5.1.4.1.1.1",
    "DX": "1.2.840.10008.5.1.4.1.1.1.1",
    "US": "1.2.840.10008.5.1.4.1.1.6.1",
}
UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")


def _study_bytes(seed: int, modality: Modality, n: int, source: str = "RXA01") -> list[bytes]:
    return [dataset_to_bytes(ds) for ds in generate_study(seed, modality, n, source)]


@pytest.mark.parametrize("modality", MODALITIES)
def test_same_seed_gives_byte_identical_files(modality: Modality) -> None:
    assert _study_bytes(7, modality, 2) == _study_bytes(7, modality, 2)


def test_different_seeds_or_sources_give_different_studies() -> None:
    base = read_dataset(_study_bytes(1, "MR", 1)[0])
    for other in (read_dataset(_study_bytes(2, "MR", 1)[0]), read_dataset(_study_bytes(1, "MR", 1, "RYB02")[0])):
        assert other.StudyInstanceUID != base.StudyInstanceUID
        assert other.SOPInstanceUID != base.SOPInstanceUID
        assert other.PixelData != base.PixelData
    assert plan_study(1, "MR", 1, "RXA01").phi() != plan_study(2, "MR", 1, "RXA01").phi()


@pytest.mark.parametrize("modality", MODALITIES)
def test_every_planted_phi_value_is_in_every_file(modality: Modality) -> None:
    plan = plan_study(3, modality, 3, "RXA01")
    files = [dataset_to_bytes(ds) for ds in study_instances(plan)]
    for data in files:
        missing = {k: v for k, v in plan.phi().items() if v.encode("latin-1") not in data}
        assert not missing


def test_phi_sits_in_the_attributes_it_is_named_after() -> None:
    plan = plan_study(4, "CT", 1, "RXA01")
    ds = read_dataset(dataset_to_bytes(next(study_instances(plan))))
    assert str(ds.PatientName) == plan.patient_name
    assert ds.OtherPatientIDsSequence[0].PatientID == plan.nhs_number
    assert ds.OtherPatientIDsSequence[0].IssuerOfPatientID == "NHS"
    request = ds.RequestAttributesSequence[0]
    assert (request.RequestedProcedureID, request.ScheduledProcedureStepID) == (
        plan.requested_procedure_id,
        plan.scheduled_step_id,
    )
    assert request.AccessionNumber == plan.accession
    assert ds.ReferencedPatientSequence[0].ReferencedSOPInstanceUID
    block = ds.private_block(0x0011, "IMX SYNTHETIC")
    assert block[0x10].value == plan.patient_name
    assert block[0x11].value == plan.nhs_number
    assert ds.BurnedInAnnotation == "NO"


def test_nhs_numbers_are_in_the_test_range_and_pass_modulus_11() -> None:
    for seed in range(50):
        number = plan_study(seed, "CR", 1, "RXA01").nhs_number
        digits = [int(c) for c in number]
        assert number.startswith("999") and len(number) == 10
        check = 11 - sum(d * (10 - i) for i, d in enumerate(digits[:9])) % 11
        assert digits[9] == (0 if check == 11 else check)


@pytest.mark.parametrize("modality", MODALITIES)
def test_files_are_valid_part10_with_consistent_uids(modality: Modality) -> None:
    files = _study_bytes(5, modality, 4)
    datasets = [read_dataset(data) for data in files]
    for data, ds in zip(files, datasets, strict=True):
        assert data[128:132] == b"DICM"
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert ds.file_meta.MediaStorageSOPClassUID == ds.SOPClassUID == SOP_CLASSES[modality]
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.Modality == modality
        for uid in (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID):
            assert uid.startswith("2.25.") and len(uid) <= 64 and UID.fullmatch(uid)
        assert ds.pixel_array.shape[:2] == (ds.Rows, ds.Columns)
    assert len({ds.StudyInstanceUID for ds in datasets}) == 1
    assert len({ds.SOPInstanceUID for ds in datasets}) == 4
    assert len({ds.PixelData for ds in datasets}) == 4
    series = {ds.SeriesInstanceUID: ds.SeriesNumber for ds in datasets}
    assert len(set(series.values())) == len(series)


def test_ct_slices_share_a_frame_of_reference_and_step_along_z() -> None:
    datasets = [read_dataset(data) for data in _study_bytes(6, "CT", 6)]
    assert len({ds.FrameOfReferenceUID for ds in datasets}) == 1
    first_series = [ds for ds in datasets if ds.SeriesNumber == 1]
    z = [float(ds.ImagePositionPatient[2]) for ds in first_series]
    assert z == sorted(z) and len(set(z)) == len(z)
    assert [ds.InstanceNumber for ds in first_series] == list(range(1, len(first_series) + 1))


def test_ct_is_realistic_in_size_and_header() -> None:
    data = _study_bytes(8, "CT", 1)[0]
    ds = read_dataset(data)
    assert 524_288 < len(data) < 535_000  # 512x512x2 bytes of pixels plus a few KB of header
    assert (ds.Rows, ds.Columns, ds.BitsAllocated) == (512, 512, 16)
    assert 100 <= sum(1 for _ in ds.iterall()) <= 160  # about 120 elements with nested sequences
    hu = ds.pixel_array.astype(np.int32) * int(ds.RescaleSlope) + int(ds.RescaleIntercept)
    assert hu.min() < -900 and hu.max() > 300  # air outside the body, bone inside


def test_mr_matrix_and_size() -> None:
    data = _study_bytes(8, "MR", 1)[0]
    assert (read_dataset(data).Rows, read_dataset(data).Columns) == (256, 256)
    assert 131_072 < len(data) < 140_000


def test_write_demo_data_writes_a_mix_and_reports_it(tmp_path: Path) -> None:
    calls: list[int] = []
    manifest = write_demo_data(tmp_path / "a", studies=4, seed=11, progress=calls.append)
    assert calls == [1, 2, 3, 4]
    assert [s.modality for s in manifest.studies] == ["CT", "MR", "CR", "CT"]
    assert all(f.is_file() for f in manifest.files)
    assert manifest.total_bytes == sum(f.stat().st_size for f in manifest.files)
    for study in manifest.studies:
        data = study.files[0].read_bytes()
        assert read_dataset(data, stop_before_pixels=True).StudyInstanceUID == study.study_instance_uid
        assert all(v.encode() in data for v in study.phi.values())
        # Names on disk carry no PHI.
        assert not any(v in str(f) for f in study.files for v in manifest.phi_values(min_length=4))
    saved = json.loads(manifest.to_json())
    assert [s["study_instance_uid"] for s in saved["studies"]] == [s.study_instance_uid for s in manifest.studies]
    assert saved["studies"][0]["phi"] == dict(manifest.studies[0].phi)
    again = write_demo_data(tmp_path / "b", studies=4, seed=11)
    assert [f.read_bytes() for f in again.files] == [f.read_bytes() for f in manifest.files]


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (dicom3tools) not installed")
@pytest.mark.parametrize("modality", MODALITIES)
def test_dciodvfy_finds_no_errors(modality: Modality, tmp_path: Path) -> None:
    # Three instances: the last lands in series 2 (a second view / slice thickness) where there is one.
    for index, data in enumerate(_study_bytes(9, modality, 3)):
        path = tmp_path / f"{index}.dcm"
        path.write_bytes(data)
        result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, check=False)
        errors = [line for line in (result.stdout + result.stderr).splitlines() if "Error" in line]
        assert errors == [], errors
