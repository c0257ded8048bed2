"""Keyed, deterministic pseudonyms: HMAC-SHA-256 under a per-recipient secret key.

Same input and key → same pseudonym, so every instance of a study (and every later study of the
same patient) maps consistently for one recipient, and a replay after a crash produces identical
output (DESIGN.md, idempotent stages). Different keys → unlinkable pseudonyms: two recipients
cannot join their data sets on any pseudonym, UID or date shift.

Each kind of value is hashed under its own domain label, so a patient's ID pseudonym says nothing
about their day shift and a UID that happens to equal an ID string maps differently.

Key rotation: the key is the only state. Rotating a recipient's key starts a new, unlinkable
pseudonym space (new UIDs, IDs and day shifts for everything sent afterwards). Keep the old key,
under its key id, for as long as the recipient may send back results that must be matched to
earlier deliveries; re-deriving the old mapping is then a matter of re-running the originals
with the old key. Never derive keys from anything guessable; use >= 32 random bytes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

MIN_KEY_BYTES = 16
# Shifts move dates back by one to eleven years: never into the future, always far enough that
# the real date cannot be read off by rounding.
MIN_SHIFT_DAYS = 365
SHIFT_SPAN_DAYS = 3650


class Pseudonymizer:
    def __init__(self, key: bytes) -> None:
        if len(key) < MIN_KEY_BYTES:
            raise ValueError(f"pseudonym key must be at least {MIN_KEY_BYTES} bytes")
        self._mac = hmac.new(key, digestmod=hashlib.sha256)

    def digest(self, domain: bytes, value: str) -> bytes:
        mac = self._mac.copy()
        mac.update(domain + b"\x00" + value.encode("utf-8", "surrogateescape"))
        return mac.digest()

    def uid(self, uid: str) -> str:
        """A UUID-derived UID (PS3.5 B.2): "2.25." + 128 bits as decimal, at most 44 characters."""
        number = int.from_bytes(self.digest(b"uid", uid.strip("\x00 "))[:16], "big")
        return f"2.25.{number}"

    def identifier(self, value: str) -> str:
        """An ID (LO, at most 64 characters): "IMX-" + 80 bits in base32."""
        return "IMX-" + _base32(self.digest(b"id", value.strip()))[:16]

    def person_name(self, value: str) -> str:
        """A PN ("IMX^<code>": family^given, PS3.5 6.2.1) standing for one person."""
        return "IMX^" + _base32(self.digest(b"pn", value.strip().upper()))[:12]

    def ae_title(self, value: str) -> str:
        """An AE title (at most 16 characters) standing for one device."""
        return "IMX" + _base32(self.digest(b"ae", value.strip()))[:13]

    def day_shift(self, anchor: str) -> int:
        """Days to add to every date of one patient (negative): same patient → same shift."""
        number = int.from_bytes(self.digest(b"dayshift", anchor.strip())[:4], "big")
        return -(MIN_SHIFT_DAYS + number % SHIFT_SPAN_DAYS)


def _base32(raw: bytes) -> str:
    return base64.b32encode(raw).decode("ascii").rstrip("=")
