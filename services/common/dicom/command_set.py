"""DIMSE command sets encoded with `struct`: group 0000, always Implicit VR Little Endian (PS3.7 6.3.1),
elements in tag order, the group length first. Ingest's C-STORE-RSP and the gateway's C-STORE-RQ are
built here, the bytes pynetdicom's encoder gives for the same values, without pydicom's writer."""

from __future__ import annotations

import struct
from collections.abc import Iterable


def command_element(element: int, value: bytes) -> bytes:
    """One element of group 0000 (PS3.5 7.1.3: tag, 4-byte length, value)."""
    return struct.pack("<HHI", 0x0000, element, len(value)) + value


def us_value(value: int) -> bytes:
    return struct.pack("<H", value)


def ui_value(uid: str) -> bytes:
    """A UI value NUL-padded to even length (PS3.5 6.2), as pydicom writes it."""
    encoded = uid.encode("ascii")
    return encoded + b"\x00" if len(encoded) % 2 else encoded


def command_set(elements: Iterable[bytes]) -> bytes:
    """The encoded elements preceded by their group length (0000,0000)."""
    body = b"".join(elements)
    return command_element(0x0000, struct.pack("<I", len(body))) + body
