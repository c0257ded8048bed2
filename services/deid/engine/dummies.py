"""Dummy values for action D (PS3.15 Table E.1-1a): non-zero length, valid for the VR, identifying nothing."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

DUMMY_TEXT = "ANONYMIZED"

# One value per VR. Text VRs share one word that fits SH/CS/AE (<= 16 characters, upper case).
DUMMIES: Mapping[str, object] = MappingProxyType(
    {
        "AE": DUMMY_TEXT,
        "AS": "000Y",
        "AT": 0,
        "CS": DUMMY_TEXT,
        "DA": "19000101",
        "DS": "0",
        "DT": "19000101000000",
        "FD": 0.0,
        "FL": 0.0,
        "IS": "0",
        "LO": DUMMY_TEXT,
        "LT": DUMMY_TEXT,
        "OB": b"\x00\x00",
        "OD": b"\x00" * 8,
        "OF": b"\x00" * 4,
        "OL": b"\x00" * 4,
        "OV": b"\x00" * 8,
        "OW": b"\x00\x00",
        "PN": DUMMY_TEXT,
        "SH": DUMMY_TEXT,
        "SL": 0,
        "SS": 0,
        "ST": DUMMY_TEXT,
        "SV": 0,
        "TM": "000000",
        "UC": DUMMY_TEXT,
        "UL": 0,
        "UN": b"\x00\x00",
        "UR": "urn:imx:anonymized",
        "US": 0,
        "UT": DUMMY_TEXT,
        "UV": 0,
    }
)


def dummy_for(vr: str) -> object:
    """The dummy for a VR; ambiguous VRs ("US or SS") use their first reading."""
    return DUMMIES.get(vr.split(" ")[0], b"\x00\x00")
