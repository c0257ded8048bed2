"""Signed retrieval references: a partner's retrieval URL that proves, by itself, which object it names.

Delivery puts `?ref=<token>` on the WADO-RS URL of each delivery it publishes. The token carries the
object's SHA-256, size and transfer syntax, and an HMAC-SHA256 over them together with the partner and
the instance's three UIDs, under a key only delivery holds (IMX_DELIVERY_RETRIEVAL_KEY_FILE). A request
for that URL with that partner's key is answered from the blob store without reading the delivered
index: the key is still checked (cached, as for every request) and the retrieval still audited. A token
that does not verify for the partner and the path it came with (another partner's URL, an edited one,
one signed under a key since replaced) is ignored and the index is read, exactly as without one; so
another partner's object stays the same 404 as an unknown one, and the token never widens what a
partner can read beyond an object it was delivered. It names that object, not "the current one": after a
correction, or after the study's records were purged, the URL with its token still serves the object it
was issued for (to that partner only) until the blob is collected (then 410), where the URL without it
serves the correction (or 404).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass
from pathlib import Path

QUERY_PARAM = "ref"
_VERSION = "v1"
_TOKEN = re.compile(r"([0-9a-f]{64})_([0-9]{1,15})_([0-9.]{0,64})_([0-9a-f]{64})")
MIN_KEY_BYTES = 32


@dataclass(frozen=True)
class SignedObject:
    """What a verified token says of the object its URL names."""

    sha256: str
    size: int
    transfer_syntax_uid: str


class RetrievalRefs:
    """Signs and verifies retrieval tokens under one key (every delivery replica must share it)."""

    def __init__(self, key: bytes) -> None:
        if len(key) < MIN_KEY_BYTES:
            raise ValueError(f"a retrieval key needs at least {MIN_KEY_BYTES} bytes")
        # Keyed once: each MAC copies this state rather than hashing the key's pads again (~1 us each,
        # once per delivery and once per fetch by reference).
        self._keyed = hmac.new(key, digestmod=hashlib.sha256)

    @classmethod
    def from_file(cls, path: Path) -> RetrievalRefs:
        """The key file's contents (whitespace at the ends ignored) are the key."""
        return cls(path.read_bytes().strip())

    def _mac(self, partner_id: str, uids: tuple[str, str, str], signed: SignedObject) -> str:
        message = "\n".join((_VERSION, partner_id, *uids, signed.sha256, str(signed.size), signed.transfer_syntax_uid))
        mac = self._keyed.copy()
        mac.update(message.encode())
        return mac.hexdigest()

    def token(self, partner_id: str, study_uid: str, series_uid: str, sop_uid: str, signed: SignedObject) -> str:
        mac = self._mac(partner_id, (study_uid, series_uid, sop_uid), signed)
        return f"{signed.sha256}_{signed.size}_{signed.transfer_syntax_uid}_{mac}"

    def verify(
        self, token: str | None, partner_id: str, study_uid: str, series_uid: str, sop_uid: str
    ) -> SignedObject | None:
        """The object `token` names for this partner and path; None when it does not verify."""
        match = _TOKEN.fullmatch(token or "")
        if match is None:
            return None
        sha256, size, syntax, mac = match.groups()
        signed = SignedObject(sha256, int(size), syntax)
        expected = self._mac(partner_id, (study_uid, series_uid, sop_uid), signed)
        return signed if hmac.compare_digest(mac, expected) else None
