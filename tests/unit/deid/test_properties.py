"""Properties over arbitrary datasets: only typed errors, and planted PHI never survives."""

from __future__ import annotations

import contextlib
import warnings
from io import BytesIO

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom import config, dcmread
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from services.deid.engine import BASIC, RESEARCH, DeidError, Option, Profile, deidentify

from .builders import KEY, ct_dataset, to_bytes

NAME, OTHER_NAME, PATIENT_ID = "Zyxwquorph", "Qwertyvane", "PHI998877"
PLANTED = (NAME, OTHER_NAME, PATIENT_ID)
PROFILES = [BASIC, RESEARCH, Profile("safe-private", options=frozenset({Option.RETAIN_SAFE_PRIVATE}))]

# Identifying attributes that receive the planted values, and ordinary ones that get harmless values.
IDENTIFYING = [
    (0x00081050, "PN", f"{OTHER_NAME}^Bob"),
    (0x00080090, "PN", f"Dr {OTHER_NAME}"),
    (0x00101040, "LO", f"1 {NAME} Road"),
    (0x00104000, "LT", f"patient {NAME} was anxious"),
    (0x00081030, "LO", f"CT for {NAME}"),
    (0x00080080, "LO", f"{OTHER_NAME} Infirmary"),
]
ORDINARY = [
    (0x00180015, "CS", st.sampled_from(["HEAD", "CHEST", ""])),
    (0x00180050, "DS", st.sampled_from(["1.0", "5", ""])),
    (0x00280010, "US", st.integers(0, 1024)),
    (0x00200013, "IS", st.sampled_from(["1", "42"])),
    (0x00080020, "DA", st.sampled_from(["20240101", "2024.01.02", "bad", ""])),
    (0x0008002A, "DT", st.sampled_from(["20240101101010", "2024", "x"])),
    (0x00080030, "TM", st.sampled_from(["101010", ""])),
    (0x0020000D, "UI", st.sampled_from(["1.2.3.4", "1.2.840.10008.5.1.4.1.1.2", ""])),
    (0x00081155, "UI", st.sampled_from(["1.2.3.5", "9.9"])),
    (0x00400555, "SQ", None),
    (0x00081140, "SQ", None),
    (0x52009230, "SQ", None),
]
SEQUENCES = [tag for tag, vr, _ in ORDINARY if vr == "SQ"]


@st.composite
def datasets(draw: st.DrawFn, depth: int = 0) -> Dataset:
    with config.disable_value_validation():  # invalid values are part of the input space
        return _dataset(draw, depth)


def _dataset(draw: st.DrawFn, depth: int) -> Dataset:
    ds = Dataset()
    if depth == 0:
        # The patient's own name and ID are always in the header: that is what lets the engine
        # recognise them in descriptors and in the leak check.
        ds.PatientName, ds.PatientID = f"{NAME}^Ann", PATIENT_ID
    for tag, vr, value in draw(st.lists(st.sampled_from(IDENTIFYING), max_size=4, unique=True)):
        ds.add_new(tag, vr, value)
    for tag, vr, values in draw(st.lists(st.sampled_from(ORDINARY), max_size=6, unique_by=lambda t: t[0])):
        if vr == "SQ":
            if depth < 3:
                items = draw(st.lists(datasets(depth + 1), max_size=2))
                ds.add_new(tag, "SQ", Sequence(items))
        else:
            ds.add_new(tag, vr, draw(values))
    if draw(st.booleans()):
        block = ds.private_block(0x0009 + 2 * draw(st.integers(0, 3)), "PROPERTY TEST", create=True)
        block.add_new(0x01, "LO", f"{NAME} private")
        block.add_new(0x02, "SQ", Sequence([Dataset()]))
    return ds


def _instance(body: Dataset) -> bytes:
    ds = ct_dataset()
    for elem in body:
        ds[elem.tag] = elem
    return to_bytes(ds)


def test_engine_neither_warns_nor_logs_values(caplog: pytest.LogCaptureFixture) -> None:
    with config.disable_value_validation():
        ds = ct_dataset()
        ds.StudyDate, ds.AcquisitionDateTime = "2024.13.45", "x"
        data = to_bytes(ds)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        deidentify(data, RESEARCH, KEY)
    assert not [record for record in caplog.records if "2024.13" in record.getMessage()]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=datasets(), profile=st.sampled_from(PROFILES))
def test_planted_phi_never_survives(body: Dataset, profile: Profile) -> None:
    with config.disable_value_validation():
        data = _instance(body)
    out = deidentify(data, profile, KEY).data
    lowered = out.lower()
    assert not [value for value in PLANTED if value.lower().encode() in lowered]
    dcmread(BytesIO(out))


@settings(max_examples=80, deadline=None)
@given(
    edits=st.lists(st.tuples(st.integers(0, 4000), st.integers(0, 255)), min_size=1, max_size=8),
    cut=st.one_of(st.none(), st.integers(0, 4000)),
)
def test_damaged_input_raises_only_deid_errors(edits: list[tuple[int, int]], cut: int | None) -> None:
    data = bytearray(to_bytes(ct_dataset()))
    for position, byte in edits:
        if position < len(data):
            data[position] = byte
    damaged = bytes(data[:cut] if cut is not None else data)
    with contextlib.suppress(DeidError):
        deidentify(damaged, BASIC, KEY)
