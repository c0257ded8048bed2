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
