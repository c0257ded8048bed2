"""Record what was done: the attributes PS3.15 E.1.1 and E.3 require on a de-identified instance."""

from __future__ import annotations

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from .actions import BASIC_PROFILE_CODE, CLEAN_PIXEL_DATA_CODE, Option

MAX_LO = 64


def method_codes(options: frozenset[Option], pixels_cleaned: bool) -> list[tuple[str, str]]:
    """CID 7050 codes: the Basic Profile, then each option in a stable order."""
    codes = [BASIC_PROFILE_CODE]
    if pixels_cleaned:
        codes.append(CLEAN_PIXEL_DATA_CODE)
    codes.extend((option.code, option.meaning) for option in sorted(options, key=lambda o: o.code))
    return codes


def record_method(
    ds: Dataset, profile_name: str, profile_version: str, options: frozenset[Option], pixels_cleaned: bool
) -> None:
    codes = method_codes(options, pixels_cleaned)
    ds.PatientIdentityRemoved = "YES"
    # De-identification Method is LO (64 characters per value), so one value per step.
    ds.DeidentificationMethod = [f"imx {profile_name} v{profile_version}"[:MAX_LO]] + [
        meaning[:MAX_LO] for _, meaning in codes
    ]
    items = []
    for value, meaning in codes:
        item = Dataset()
        item.CodeValue = value
        item.CodingSchemeDesignator = "DCM"
        item.CodeMeaning = meaning
        items.append(item)
    ds.DeidentificationMethodCodeSequence = Sequence(items)
    if Option.RETAIN_LONGITUDINAL_MODIFIED_DATES in options:
        ds.LongitudinalTemporalInformationModified = "MODIFIED"  # PS3.15 E.3.6
    elif Option.RETAIN_LONGITUDINAL_FULL_DATES in options:
        ds.LongitudinalTemporalInformationModified = "UNMODIFIED"
    if pixels_cleaned:
        ds.BurnedInAnnotation = "NO"
