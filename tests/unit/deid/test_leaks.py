"""The release check: planted PHI anywhere in the output is caught and reported by tag only."""

from __future__ import annotations

from io import BytesIO

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from services.deid.engine import BASIC, Action, PhiLeak, Profile, check_for_leaks, deidentify

from .builders import KEY, ct_dataset, to_bytes

PATIENT_NAME = 0x00100010
PRIVATE_NAME = 0x00191010  # (0019,xx10) under "ACME PRIVATE": holds the patient's surname


def test_phi_kept_in_a_private_tag_by_a_bad_override_is_caught() -> None:
    careless = Profile("careless", overrides={PRIVATE_NAME: Action.KEEP})
    with pytest.raises(PhiLeak) as caught:
        deidentify(to_bytes(ct_dataset()), careless, KEY)
    assert caught.value.tag == PRIVATE_NAME
    assert caught.value.source == PATIENT_NAME
    assert "Thistlewood" not in str(caught.value)
    assert "(0019,1010)" in str(caught.value)


def test_phi_in_a_deeply_nested_unlisted_attribute_is_caught() -> None:
    ds = ct_dataset()
    inner = Dataset()
    inner.CodeValue, inner.CodingSchemeDesignator = "X1", "99TEST"
    inner.CodeMeaning = "seen by Dr Hughes"  # the referring physician's family name
    middle = Dataset()
    middle.ConceptNameCodeSequence = Sequence([inner])
    ds.ProcedureCodeSequence = Sequence([middle])
    with pytest.raises(PhiLeak) as caught:
        deidentify(to_bytes(ds), BASIC, KEY)
    assert caught.value.tag == 0x00080104  # Code Meaning
    assert caught.value.source == 0x00080090  # Referring Physician's Name


def test_check_for_leaks_reports_tags_for_a_raw_copy_of_the_original() -> None:
    original = ct_dataset()
    data = to_bytes(original)
    leaks = check_for_leaks(original, data, dcmread(BytesIO(data)), BASIC)
    found = {leak.tag for leak in leaks}
    assert {0x00100010, 0x00100020, 0x00080080, 0x0020000D} <= found
    assert all(isinstance(leak.source, int) for leak in leaks)


def test_short_values_and_partial_words_are_not_leaks() -> None:
    ds = ct_dataset()
    ds.PatientName = "Li^Al"  # tokens under three letters are not searched for
    ds.PatientSex = "M"
    ds.BodyPartExamined = "AL"
    ds.ImageComments = "Alignment checked"
    deidentify(to_bytes(ds), BASIC, KEY)


def test_an_already_deidentified_instance_passes_again() -> None:
    once = deidentify(to_bytes(ct_dataset()), BASIC, KEY).data
    twice = deidentify(once, BASIC, KEY)
    assert dcmread(BytesIO(twice.data)).PatientIdentityRemoved == "YES"


def test_clean_descriptors_removes_known_identifiers_from_kept_text() -> None:
    from services.deid.engine import RESEARCH

    out = dcmread(BytesIO(deidentify(to_bytes(ct_dataset()), RESEARCH, KEY).data))
    assert out.StudyDescription == "CT HEAD for"
    assert out.SeriesDescription == "Axial 5mm"


def test_non_ascii_names_are_found_in_the_instance_character_set() -> None:
    ds = ct_dataset()
    ds.PatientName = "Müllerová^Zoë"
    ds.private_block(0x0019, "ACME PRIVATE")[0x10].value = "Müllerová"
    careless = Profile("careless", overrides={PRIVATE_NAME: Action.KEEP})
    with pytest.raises(PhiLeak) as caught:
        deidentify(to_bytes(ds), careless, KEY)
    assert caught.value.source == PATIENT_NAME
