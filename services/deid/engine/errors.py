"""Typed failures of de-identification.

Every error names *what* failed (a tag, a keyword, a reason code) and never a value from the
header: messages end up in logs, quarantine reasons and audit records (DESIGN.md, "PHI never
appears in logs ... or error messages").
"""

from __future__ import annotations


def tag_text(tag: int) -> str:
    """Render a tag the way the standard does, e.g. ``(0010,0010)``."""
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


class DeidError(Exception):
    """Base class: the instance cannot be released to this recipient as it is."""

    reason = "deid_error"


class NotDeidentifiable(DeidError):
    """The input cannot be processed (unreadable, unsupported encoding, unsupported pixel data)."""

    reason = "not_deidentifiable"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class UndecodableInput(DeidError):
    """A value the decoder cannot read (an unknown VR, a malformed number or character set): pydicom
    decodes values when they are first used, so these can surface after the header was parsed.
    ``detail`` names the error's type only; its message may quote the value."""

    reason = "undecodable_input"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class BurnedInAnnotation(DeidError):
    """Pixel data may carry burned-in identifying text and no pixel-clean rule matches (PS3.15 E.3.1)."""

    reason = "burned_in_annotation"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class PhiLeak(DeidError):
    """An identifying value of the original survived into the output.

    ``tag`` is where it was found (the tag of the element in the output, or ``None`` when only
    the encoded bytes matched), ``source`` the original attribute whose value it is.
    """

    reason = "phi_leak"

    def __init__(self, tag: int | None, source: int) -> None:
        where = tag_text(tag) if tag is not None else "encoded header"
        super().__init__(f"identifying value of {tag_text(source)} found in {where}")
        self.tag = tag
        self.source = source
