"""The gateways' usual fetch (a cached key, a signed reference, an object of one chunk) is answered
before FastAPI runs (`PartnerApp.at_once`, services/delivery/dicomweb.py): the partner sees the same
status, headers and body as from the FastAPI route it bypasses, and one retrieval event either way;
whatever it declines (another method, a path the route does not match, an unknown key, no reference)
is FastAPI's, unchanged."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from services.common.blob_store import LocalBlobStore
from services.delivery.delivered import DeliveredInstance
from services.delivery.dicomweb import PartnerApp, create_partner_app
from services.delivery.retrieval_refs import QUERY_PARAM, RetrievalRefs, SignedObject
from services.proto_gen.imx.v1.events_pb2 import PartnerRetrieval

STUDY, SERIES, SOP = "1.2.3", "1.2.3.4", "1.2.3.4.5"
SYNTAX = "1.2.840.10008.1.2.1"
KEY = "partner-key"


class OneInstance:
    def __init__(self, item: DeliveredInstance) -> None:
        self.item = item

    def instance(self, partner_id: str, study_uid: str, series_uid: str, sop_uid: str) -> DeliveredInstance | None:
        wanted = (self.item.partner_id, self.item.study_uid, self.item.series_uid, self.item.sop_uid)
        return self.item if (partner_id, study_uid, series_uid, sop_uid) == wanted else None

    def study(self, partner_id: str, study_uid: str) -> list[DeliveredInstance]:
        return []

    def series(self, partner_id: str, study_uid: str, series_uid: str) -> list[DeliveredInstance]:
        return []

    def studies(self, partner_id: str, narrowed: object = None) -> Iterator[dict[str, object]]:
        return iter(())


@pytest.fixture
def blobs(tmp_path: Path) -> LocalBlobStore:
    return LocalBlobStore(tmp_path / "blobs")


def _app(blobs: LocalBlobStore, sha256: str, size: int, events: list[PartnerRetrieval]) -> PartnerApp:
    item = DeliveredInstance("hosp-a", STUDY, SERIES, SOP, "1.2.840.10008.5.1.4.1.1.2", SYNTAX, sha256, size, "d1")
    known = {KEY: "hosp-a"}
    return create_partner_app(
        OneInstance(item),
        known.get,
        blobs.extent,
        events.append,
        refs=RetrievalRefs(b"r" * 32),
        cached_partner_for_key=known.get,
    )


def _url(sha256: str, size: int, sop: str = SOP) -> str:
    ref = RetrievalRefs(b"r" * 32).token("hosp-a", STUDY, SERIES, sop, SignedObject(sha256, size, SYNTAX))
    return f"/dicomweb/studies/{STUDY}/series/{SERIES}/instances/{sop}?{QUERY_PARAM}={ref}"


def _both(app: PartnerApp, method: str, url: str, **headers: str) -> tuple[tuple[object, ...], tuple[object, ...], int]:
    """The answer with `at_once` and without (FastAPI's route alone), and how many `at_once` gave."""
    answered = []
    at_once = app.at_once
    assert at_once is not None

    def counted(scope: dict[str, object]) -> object:
        response = at_once(scope)
        answered.append(response is not None)
        return response

    def ask() -> tuple[object, ...]:
        got = TestClient(app, follow_redirects=False).request(method, url, headers=headers)
        return got.status_code, sorted(got.headers.items()), got.content

    app.at_once = counted  # type: ignore[assignment]
    fast = ask()
    app.at_once = None
    slow = ask()
    app.at_once = at_once
    return fast, slow, sum(answered)


def test_a_signed_fetch_is_answered_at_once_as_fastapi_answers_it(blobs: LocalBlobStore) -> None:
    data = b"\0" * 128 + b"DICM" + b"x" * 5000
    source = blobs.put(b"old header" + data[132:])
    plain = blobs.put(data)
    spliced, size = blobs.put_spliced(b"new" + data[:129], memoryview(data[132:]), source, 10)
    events: list[PartnerRetrieval] = []
    for sha256, length in ((plain, len(data)), (spliced, size)):
        app = _app(blobs, sha256, length, events)
        fast, slow, answered = _both(app, "GET", _url(sha256, length), authorization=f"Bearer {KEY}")
        assert answered == 1
        assert fast == slow
        assert fast[0] == 200 and len(fast[2]) == length  # type: ignore[arg-type]
    assert [(e.action, e.http_status, e.bytes) for e in events] == [
        ("instance", 200, len(data)),
        ("instance", 200, len(data)),
        ("instance", 200, size),
        ("instance", 200, size),
    ]


def test_a_gone_object_is_the_same_410_at_once(blobs: LocalBlobStore) -> None:
    sha256 = blobs.put(b"DICM" * 100)
    events: list[PartnerRetrieval] = []
    app = _app(blobs, sha256, 400, events)
    blobs.path_for(sha256).unlink()
    fast, slow, answered = _both(app, "GET", _url(sha256, 400), authorization=f"Bearer {KEY}")
    assert answered == 1
    assert fast == slow
    assert fast[0] == 410
    assert [e.http_status for e in events] == [410, 410]


@pytest.mark.parametrize(
    ("method", "suffix", "key", "signed"),
    [
        ("HEAD", "", KEY, True),  # not the route's method: FastAPI's 405
        ("GET", "/", KEY, True),  # not the route's path
        ("GET", "", "unknown", True),  # a key not in the cache: looked up by the route
        ("GET", "", KEY, False),  # no reference: the index
    ],
)
def test_what_at_once_declines_is_fastapis(
    blobs: LocalBlobStore, method: str, suffix: str, key: str, signed: bool
) -> None:
    sha256 = blobs.put(b"DICM" * 100)
    app = _app(blobs, sha256, 400, [])
    url = _url(sha256, 400) if signed else f"/dicomweb/studies/{STUDY}/series/{SERIES}/instances/{SOP}"
    path, _, query = url.partition("?")
    fast, slow, answered = _both(
        app, method, path + suffix + (f"?{query}" if query else ""), authorization=f"Bearer {key}"
    )
    assert answered == 0
    assert fast == slow


def _scope(url: str) -> dict[str, object]:
    path, _, query = url.partition("?")
    return {
        "type": "http",
        "method": "GET",
        "path": path,
        "query_string": query.encode(),
        "headers": [(b"host", b"delivery"), (b"authorization", f"Bearer {KEY}".encode())],
    }


@pytest.mark.parametrize("whole", [True, False])
def test_a_fetch_written_by_the_server_records_its_size_only_when_all_of_it_went(
    blobs: LocalBlobStore, whole: bool
) -> None:
    sha256 = blobs.put(b"DICM" * 100)
    events: list[PartnerRetrieval] = []
    answer = _app(blobs, sha256, 400, events).direct(_scope(_url(sha256, 400)))  # type: ignore[misc]
    assert answer is not None and events == []
    answer.done(whole)  # the server wrote all of it, or the partner hung up part way
    assert [(e.http_status, e.bytes) for e in events] == [(200, 400 if whole else 0)]


def test_a_fetch_broken_off_on_the_asgi_path_is_still_recorded_and_not_as_sent(blobs: LocalBlobStore) -> None:
    sha256 = blobs.put(b"DICM" * 100)
    events: list[PartnerRetrieval] = []
    app = _app(blobs, sha256, 400, events)
    app.at_once = None

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, object]) -> None:
        if message["type"] == "http.response.body":
            raise ConnectionResetError  # the partner hung up before the body

    with pytest.raises(ConnectionResetError):
        asyncio.run(app(_scope(_url(sha256, 400)), receive, send))  # type: ignore[arg-type]
    assert [(e.http_status, e.bytes) for e in events] == [(200, 0)]
