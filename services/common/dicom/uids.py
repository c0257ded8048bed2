"""Whether a UID is one that pydicom reads without a warning: PS3.5 9.1's form (components of digits
without a leading zero, joined by dots) and at most 64 characters.

One check for every place that reads UIDs itself to stay off pydicom's slower path (ingest's command
sets, the gateway's responses and file meta, delivery's DICOMweb paths): a UID that fails it goes the
library's way, or is refused, so none of them may be more lenient than the others.
"""

from __future__ import annotations

import re

from pydicom.uid import RE_VALID_UID

UID_MAX_LENGTH = 64


def is_conformant_uid(text: str) -> bool:
    return len(text) <= UID_MAX_LENGTH and RE_VALID_UID.fullmatch(text) is not None


_AS_RECEIVED = re.compile(r"[0-9]+(\.[0-9]+)*")


def is_uid_as_received(text: str) -> bool:
    """What ingest accepts as a UID (header.py): digits and dots, at most 64 characters, leading zeros
    in a component allowed (some devices write them); what a route may match, then."""
    return len(text) <= UID_MAX_LENGTH and _AS_RECEIVED.fullmatch(text) is not None
