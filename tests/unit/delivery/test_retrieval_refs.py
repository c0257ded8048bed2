"""Signed retrieval references: a token verifies only for the partner, path and object it was made for."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

import pytest

from services.delivery.retrieval_refs import RetrievalRefs, SignedObject

KEY = b"k" * 32
UIDS = ("2.25.1", "2.25.2", "2.25.3")
OBJECT = SignedObject("ab" * 32, 527_123, "1.2.840.10008.1.2.1")


def test_a_token_verifies_for_its_partner_and_path_and_says_the_object() -> None:
    refs = RetrievalRefs(KEY)
    token = refs.token("lab", *UIDS, OBJECT)
    assert refs.verify(token, "lab", *UIDS) == OBJECT
    assert "?" not in token and "&" not in token and "/" not in token  # safe in a query as it is


@pytest.mark.parametrize(
    ("partner", "uids"),
    [
        ("other-partner", UIDS),
        ("lab", ("2.25.9", *UIDS[1:])),
        ("lab", (UIDS[0], "2.25.9", UIDS[2])),
        ("lab", (*UIDS[:2], "2.25.9")),
    ],
)
def test_another_partner_or_path_does_not_verify(partner: str, uids: tuple[str, str, str]) -> None:
    refs = RetrievalRefs(KEY)
    assert refs.verify(refs.token("lab", *UIDS, OBJECT), partner, *uids) is None


def test_an_edited_token_or_another_key_does_not_verify() -> None:
    refs = RetrievalRefs(KEY)
    sha, size, syntax, mac = refs.token("lab", *UIDS, OBJECT).split("_")
    edited = [
        f"{'cd' * 32}_{size}_{syntax}_{mac}",
        f"{sha}_{int(size) + 1}_{syntax}_{mac}",
        f"{sha}_{size}_1.2.840.10008.1.2_{mac}",
        f"{sha}_{size}_{syntax}_{'0' * 64}",
        "",
        "garbage",
    ]
    assert [refs.verify(t, "lab", *UIDS) for t in edited] == [None] * len(edited)
    assert RetrievalRefs(b"x" * 32).verify(refs.token("lab", *UIDS, OBJECT), "lab", *UIDS) is None
    assert refs.verify(None, "lab", *UIDS) is None


def test_a_short_key_is_refused_and_a_key_file_is_read_without_its_newline(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        RetrievalRefs(b"short")
    (tmp_path / "key").write_bytes(KEY + b"\n")
    token = RetrievalRefs.from_file(tmp_path / "key").token("lab", *UIDS, OBJECT)
    assert RetrievalRefs(KEY).verify(token, "lab", *UIDS) == OBJECT


def test_a_token_is_the_documented_hmac_so_tokens_made_by_another_replica_or_version_verify() -> None:
    message = "\n".join(("v1", "lab", *UIDS, OBJECT.sha256, str(OBJECT.size), OBJECT.transfer_syntax_uid))
    mac = hmac.new(KEY, message.encode(), hashlib.sha256).hexdigest()
    refs = RetrievalRefs(KEY)
    for partner in ("other", "lab"):  # the keyed state is copied, never consumed, by each token
        refs.token(partner, *UIDS, OBJECT)
    assert refs.token("lab", *UIDS, OBJECT) == f"{OBJECT.sha256}_{OBJECT.size}_{OBJECT.transfer_syntax_uid}_{mac}"
