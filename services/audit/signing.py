"""The audit log's signing key (Ed25519) and what it signs: tree heads and retention checkpoints.

The key is a PKCS#8 PEM file. When the configured file does not exist the service creates one, readable
by its owner only (0600), and logs the public key's fingerprint so an operator can note it somewhere the
log's own database is not. A deployment puts the file on a secret volume instead.
"""

from __future__ import annotations

import hashlib
import logging
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

log = logging.getLogger(__name__)

_STH_CONTEXT = b"imx-audit-tree-head/v1\x00"
_CHECKPOINT_CONTEXT = b"imx-audit-checkpoint/v1\x00"


def fingerprint(public_key: bytes) -> str:
    """SHA-256 of the raw 32-byte public key, hex, as `imx audit verify` prints it."""
    return hashlib.sha256(public_key).hexdigest()


@dataclass(frozen=True)
class Signer:
    private_key: Ed25519PrivateKey

    @property
    def public_key(self) -> bytes:
        return self.private_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.public_key)

    def sign(self, message: bytes) -> bytes:
        return self.private_key.sign(message)

    @classmethod
    def generate(cls) -> Signer:
        return cls(Ed25519PrivateKey.generate())


def verify_signature(public_key: bytes, message: bytes, signature: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


def load_or_create_key(path: Path) -> Signer:
    """The key in `path`; a new one written there (0600, parent folders 0700) when it does not exist."""
    try:
        pem = path.read_bytes()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        signer = Signer.generate()
        pem = signer.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        try:
            # O_EXCL: of two processes starting at once, one writes and the other reads what it wrote.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return load_or_create_key(path)
        with os.fdopen(fd, "wb") as out:
            out.write(pem)
            out.flush()
            os.fsync(out.fileno())
        log.warning("audit log signing key created", extra={"fingerprint": f"sha256:{signer.fingerprint}"})
        return signer
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} does not hold an Ed25519 private key")
    signer = Signer(key)
    log.info("audit log signing key loaded", extra={"fingerprint": f"sha256:{signer.fingerprint}"})
    return signer


def tree_head_message(size: int, timestamp_ms: int, root: bytes) -> bytes:
    """What a signed tree head signs (the fields of RFC 9162 §4.10's TreeHeadDataV2 in a fixed layout)."""
    return _STH_CONTEXT + struct.pack(">QQ", size, timestamp_ms) + root


def checkpoint_message(purged_to: int, timestamp_ms: int, root: bytes, cutoff_ms: int) -> bytes:
    """What a retention checkpoint signs: leaves [0, purged_to) were purged, MTH(D[0:purged_to]) = root,
    records recorded before cutoff_ms went."""
    return _CHECKPOINT_CONTEXT + struct.pack(">QQQ", purged_to, timestamp_ms, cutoff_ms) + root
