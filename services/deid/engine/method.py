"""Record what was done: the attributes PS3.15 E.1.1 and E.3 require on a de-identified instance."""

from __future__ import annotations

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag, Tag

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
    _set(ds, _PATIENT_IDENTITY_REMOVED, "YES")
    # De-identification Method is LO (64 characters per value), so one value per step.
    _set(
        ds,
        _DEIDENTIFICATION_METHOD,
        [f"imx {profile_name} v{profile_version}"[:MAX_LO]] + [meaning[:MAX_LO] for _, meaning in codes],
    )
    items = []
    for value, meaning in codes:
        item = Dataset()
        _set_new(item, _CODE_VALUE, value)
        _set_new(item, _CODING_SCHEME_DESIGNATOR, "DCM")
        _set_new(item, _CODE_MEANING, meaning)
        items.append(item)
    _set(ds, _DEIDENTIFICATION_METHOD_CODE_SEQUENCE, Sequence(items))
    if Option.RETAIN_LONGITUDINAL_MODIFIED_DATES in options:
        _set(ds, _LONGITUDINAL_TEMPORAL_INFORMATION_MODIFIED, "MODIFIED")  # PS3.15 E.3.6
    elif Option.RETAIN_LONGITUDINAL_FULL_DATES in options:
        _set(ds, _LONGITUDINAL_TEMPORAL_INFORMATION_MODIFIED, "UNMODIFIED")
    if pixels_cleaned:
        _set(ds, _BURNED_IN_ANNOTATION, "NO")


def _tag(keyword: str) -> tuple[BaseTag, str]:
    tag = tag_for_keyword(keyword)
    assert tag is not None, keyword
    return Tag(tag), dictionary_VR(tag)


_PATIENT_IDENTITY_REMOVED = _tag("PatientIdentityRemoved")
_DEIDENTIFICATION_METHOD = _tag("DeidentificationMethod")
_DEIDENTIFICATION_METHOD_CODE_SEQUENCE = _tag("DeidentificationMethodCodeSequence")
_LONGITUDINAL_TEMPORAL_INFORMATION_MODIFIED = _tag("LongitudinalTemporalInformationModified")
_BURNED_IN_ANNOTATION = _tag("BurnedInAnnotation")
_CODE_VALUE = _tag("CodeValue")
_CODING_SCHEME_DESIGNATOR = _tag("CodingSchemeDesignator")
_CODE_MEANING = _tag("CodeMeaning")


def _set(ds: Dataset, tag_vr: tuple[BaseTag, str], value: object) -> None:
    """``setattr(ds, keyword, value)`` without the keyword lookup (same elements, same VR rules)."""
    tag, vr = tag_vr
    if tag in ds._dict:
        elem = ds[tag]  # already present: pydicom keeps the element (and its VR), changing the value
        elem.value = value
    else:
        elem = DataElement(tag, vr, value)
    ds[tag] = elem


def _set_new(item: Dataset, tag_vr: tuple[BaseTag, str], value: object) -> None:
    """Add a new plain (standard, non-sequence) element to a new item, as Dataset.__setitem__ does."""
    tag, vr = tag_vr
    item._dict[tag] = DataElement(tag, vr, value)
