"""Identifier issuers the table does not list are removed unless institution identity is retained."""

from __future__ import annotations

from io import BytesIO

from pydicom import dcmread

from services.common.dicom.part10 import dataset_to_bytes
from services.common.dicom.synthetic import plan_study, study_instances
from services.deid.engine import BUILTIN_PROFILES, Option, deidentify

KEY = b"k" * 32


def _instance() -> bytes:
    ds = next(study_instances(plan_study(7, "CT", 1, "RXA01")))
    assert "IssuerOfAccessionNumberSequence" in ds
    return dataset_to_bytes(ds)


def test_issuer_of_accession_number_is_removed_by_basic_and_research() -> None:
    for name in ("basic", "research"):
        out = dcmread(BytesIO(deidentify(_instance(), BUILTIN_PROFILES[name], KEY).data))
        assert "IssuerOfAccessionNumberSequence" not in out, name


def test_issuer_of_accession_number_is_kept_when_institution_identity_is_retained() -> None:
    profile = BUILTIN_PROFILES["basic"].with_options(Option.RETAIN_INSTITUTION_IDENTITY)
    out = dcmread(BytesIO(deidentify(_instance(), profile, KEY).data))
    assert out.IssuerOfAccessionNumberSequence[0].LocalNamespaceEntityID == "RXA01"


def _text_report() -> bytes:
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence
    from pydicom.uid import UID

    from tests.unit.deid.builders import ct_dataset, to_bytes

    ds = ct_dataset()
    del ds.PixelData
    ds.SOPClassUID, ds.Modality = UID("1.2.840.10008.5.1.4.1.1.88.11"), "SR"  # Basic Text SR
    concept = Dataset()
    concept.CodeValue, concept.CodingSchemeDesignator, concept.CodeMeaning = "121071", "DCM", "Finding"
    text, person = Dataset(), Dataset()
    text.RelationshipType, text.ValueType, text.ConceptNameCodeSequence = "CONTAINS", "TEXT", Sequence([concept])
    text.TextValue = "Discussed with Dr Okonkwo-Pennington on ward 7B; wife Gwendolyn informed by phone 07700 900123"
    person.RelationshipType, person.ValueType = "CONTAINS", "PNAME"
    person.PersonName = "Okonkwo-Pennington^Ada"
    ds.ContentSequence = Sequence([text, person])
    return to_bytes(ds)


def test_a_reports_free_text_never_leaves_under_any_profile() -> None:
    """Text Value and Person Name in a report's content tree are not in the table: they were kept under
    basic, research and Clean Structured Content alike. Both paths agree on each."""
    from services.deid.engine.deidentifier import deidentify_with_pydicom
    from services.deid.engine.pseudonyms import Pseudonymizer
    from services.deid.engine.raw_engine import deidentify_raw

    data = _text_report()
    cleaned = BUILTIN_PROFILES["basic"].with_options(Option.CLEAN_STRUCTURED_CONTENT)
    for profile in (BUILTIN_PROFILES["basic"], BUILTIN_PROFILES["research"], cleaned):
        out = deidentify(data, profile, KEY).data
        assert b"Okonkwo" not in out and b"Gwendolyn" not in out and b"07700" not in out, profile.name
        reference = deidentify_with_pydicom(data, profile, KEY).data
        fast = deidentify_raw(data, profile, Pseudonymizer(KEY))  # each takes the fast path (Unsupported if not)
        assert fast.header + bytes(fast.pixel_bytes) == reference, profile.name
    kept = dcmread(BytesIO(deidentify(data, cleaned, KEY).data)).ContentSequence
    assert [item.ValueType for item in kept] == ["TEXT", "PNAME"]  # the structure and its codes stay
    assert kept[0].ConceptNameCodeSequence[0].CodeValue == "121071" and not kept[0].get("TextValue")
    basic = dcmread(BytesIO(deidentify(data, BUILTIN_PROFILES["basic"], KEY).data))
    assert len(basic.ContentSequence) == 0


def test_identifying_attributes_the_table_does_not_list_never_leave() -> None:
    """Kept verbatim under every profile before: a birth date in another calendar beside the emptied
    Gregorian one, retired order numbers, free-text comments, and a report's text outside its content
    tree. Both paths agree on each."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    from services.deid.engine.deidentifier import deidentify_with_pydicom
    from services.deid.engine.pseudonyms import Pseudonymizer
    from services.deid.engine.raw_engine import deidentify_raw
    from tests.unit.deid.builders import ct_dataset, to_bytes

    ds = ct_dataset()
    ds.add_new(0x00100033, "LO", "13690921")
    ds.add_new(0x00100034, "LO", "14250102")
    ds.add_new(0x00402006, "SH", "PLC7731")
    ds.add_new(0x00402007, "SH", "FIL8842")
    ds.add_new(0x00400400, "LT", "Husband Jim Okafor-Reyes to collect")
    context = Dataset()
    context.add_new(0x0040A160, "UT", "called husband Jim Okafor-Reyes 07700 900123")
    protocol = Dataset()
    protocol.add_new(0x00400440, "SQ", Sequence([context]))  # Protocol Context Sequence
    ds.add_new(0x00400260, "SQ", Sequence([protocol]))  # Performed Protocol Code Sequence
    data = to_bytes(ds)
    for name in ("basic", "research"):
        profile = BUILTIN_PROFILES[name]
        out = deidentify(data, profile, KEY).data
        for value in (b"13690921", b"14250102", b"PLC7731", b"FIL8842", b"Okafor", b"07700"):
            assert value not in out, (name, value)
        fast = deidentify_raw(data, profile, Pseudonymizer(KEY))
        assert fast.header + bytes(fast.pixel_bytes) == deidentify_with_pydicom(data, profile, KEY).data, name


def test_retained_safe_private_sequences_and_uids_read_without_their_vr_do_not_leave_as_received() -> None:
    """In implicit VR a safe private sequence or UID reads as UN: its items were not cleaned nor its UID
    remapped, and a nurse's name and the original UID went out. Removed instead; explicit VR as before."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

    from services.deid.engine import Profile
    from tests.unit.deid.builders import ct_dataset, to_bytes

    safe = Profile("safe", options=frozenset({Option.RETAIN_SAFE_PRIVATE}))
    original_uid = "1.2.826.0.1.3680043.77.5.5"
    ds = ct_dataset()
    stack = Dataset()
    stack.OperatorsName, stack.ReferencedSOPInstanceUID = "Nurse^Okafor", original_uid
    ds.private_block(0x2001, "Philips Imaging DD 001", create=True).add_new(0x5F, "SQ", Sequence([stack]))
    ds.private_block(0x0099, "NQHeader", create=True).add_new(0x02, "UI", "1.2.826.0.1.3680043.77.9")
    for syntax in (ImplicitVRLittleEndian, ExplicitVRLittleEndian):
        out = deidentify(to_bytes(ds, syntax), safe, KEY).data
        for value in (b"Okafor", original_uid.encode(), b"1.2.826.0.1.3680043.77.9"):
            assert value not in out, (syntax.name, value)
    kept = dcmread(BytesIO(deidentify(to_bytes(ds, ExplicitVRLittleEndian), safe, KEY).data))
    assert (0x0099, 0x1002) in kept, "explicit VR: kept, its UID remapped"
