"""The vocabulary of PS3.15 Annex E: action codes (Table E.1-1a) and profile options (CID 7050)."""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from types import MappingProxyType


class Action(StrEnum):
    """Action codes exactly as PS3.15 Table E.1-1a writes them."""

    DUMMY = "D"  # replace with a non-zero-length dummy value consistent with the VR
    ZERO = "Z"  # replace with a zero-length value (or a dummy value consistent with the VR)
    REMOVE = "X"
    KEEP = "K"  # keep; sequences are still cleaned item by item
    CLEAN = "C"  # replace with values of similar meaning known not to identify
    UID = "U"  # replace with a non-zero-length UID, consistent within the set of instances
    ZERO_OR_DUMMY = "Z/D"  # Z unless D is needed for IOD conformance (Type 2 vs Type 1)
    REMOVE_OR_ZERO = "X/Z"  # X unless Z is needed (Type 3 vs Type 2)
    REMOVE_OR_DUMMY = "X/D"  # X unless D is needed (Type 3 vs Type 1)
    REMOVE_ZERO_OR_DUMMY = "X/Z/D"  # X unless Z or D is needed (Type 3 vs 2 vs 1)
    REMOVE_ZERO_OR_UID = "X/Z/U*"  # X unless Z or replacing the contained UIDs is needed

    @property
    def is_compound(self) -> bool:
        return "/" in self.value


class Option(StrEnum):
    """Profile options: the option columns of Table E.1-1, named by their CSV column.

    ``code`` is the option's code in CID 7050 (checked against pydicom's copy of PS3.16), recorded in
    De-identification Method Code Sequence (0012,0064).
    """

    RETAIN_SAFE_PRIVATE = "rtn_safe_priv_opt"
    RETAIN_UIDS = "rtn_uids_opt"
    RETAIN_DEVICE_IDENTITY = "rtn_dev_id_opt"
    RETAIN_INSTITUTION_IDENTITY = "rtn_inst_id_opt"
    RETAIN_PATIENT_CHARACTERISTICS = "rtn_pat_chars_opt"
    RETAIN_LONGITUDINAL_FULL_DATES = "rtn_long_full_dates_opt"
    RETAIN_LONGITUDINAL_MODIFIED_DATES = "rtn_long_modif_dates_opt"
    CLEAN_DESCRIPTORS = "clean_desc_opt"
    CLEAN_STRUCTURED_CONTENT = "clean_struct_cont_opt"
    CLEAN_GRAPHICS = "clean_graph_opt"

    @property
    def code(self) -> str:
        return _OPTION_CODES[self][0]

    @property
    def meaning(self) -> str:
        return _OPTION_CODES[self][1]


BASIC_PROFILE_CODE = ("113100", "Basic Application Confidentiality Profile")
CLEAN_PIXEL_DATA_CODE = ("113101", "Clean Pixel Data Option")

_OPTION_CODES: Mapping[Option, tuple[str, str]] = MappingProxyType(
    {
        Option.CLEAN_GRAPHICS: ("113103", "Clean Graphics Option"),
        Option.CLEAN_STRUCTURED_CONTENT: ("113104", "Clean Structured Content Option"),
        Option.CLEAN_DESCRIPTORS: ("113105", "Clean Descriptors Option"),
        Option.RETAIN_LONGITUDINAL_FULL_DATES: (
            "113106",
            "Retain Longitudinal Temporal Information Full Dates Option",
        ),
        Option.RETAIN_LONGITUDINAL_MODIFIED_DATES: (
            "113107",
            "Retain Longitudinal Temporal Information Modified Dates Option",
        ),
        Option.RETAIN_PATIENT_CHARACTERISTICS: ("113108", "Retain Patient Characteristics Option"),
        Option.RETAIN_DEVICE_IDENTITY: ("113109", "Retain Device Identity Option"),
        Option.RETAIN_UIDS: ("113110", "Retain UIDs Option"),
        Option.RETAIN_SAFE_PRIVATE: ("113111", "Retain Safe Private Option"),
        Option.RETAIN_INSTITUTION_IDENTITY: ("113112", "Retain Institution Identity Option"),
    }
)
