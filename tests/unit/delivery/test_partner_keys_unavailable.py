"""A partner's key that cannot be checked (MongoDB away, past the 5 s cache) is a 503 with Retry-After on
every route: it was a 500, which gateways count as a failed attempt and dead-letter after ten, for as
long as the outage lasted, where a 503 is waited out."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pymongo.errors import ServerSelectionTimeoutError

from services.common.blob_store import LocalBlobStore
from services.delivery.dicomweb import create_partner_app
from services.delivery.retrieval_refs import QUERY_PARAM, RetrievalRefs, SignedObject

STUDY, SERIES, SOP = "1.2.3", "1.2.3.4", "1.2.3.4.5"


def _keys_away(_key: str) -> str | None:
    raise ServerSelectionTimeoutError("no servers")


class NothingRead:
    def __getattr__(self, _name: str) -> object:
        raise AssertionError("the index is not asked before the key is known")


@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize(
    "path",
    [f"/dicomweb/studies/{STUDY}/series/{SERIES}/instances/{SOP}", f"/dicomweb/studies/{STUDY}", "/dicomweb/studies"],
)
def test_an_unverifiable_key_is_503_with_retry_after(tmp_path: Path, path: str, signed: bool) -> None:
    blobs = LocalBlobStore(tmp_path)
    data = b"\0" * 128 + b"DICM" + b"x" * 100
    refs = RetrievalRefs(b"r" * 32)
    token = refs.token("hosp-a", STUDY, SERIES, SOP, SignedObject(blobs.put(data), len(data), "1.2.840.10008.1.2.1"))
    app = create_partner_app(NothingRead(), _keys_away, blobs.extent, lambda _event: None, refs=refs)  # type: ignore[arg-type]
    client = TestClient(app, raise_server_exceptions=False)
    answer = client.get(path, params={QUERY_PARAM: token} if signed else None, headers={"Authorization": "Bearer k"})
    assert answer.status_code == 503 and answer.headers["Retry-After"] == "5"
    assert "no servers" not in answer.text
