"""A fetch ends: a retrieval answer may be slow, not endless. Each read's timeout alone let a server sending
a byte at a time, or a multipart answer whose first part (the object) is followed by an endless tail, hold
the gateway, and so the partner's whole feed, for ever. Real sockets to a tiny server on 127.0.0.1."""

from __future__ import annotations

import contextlib
import hashlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from services.gateway import fetch
from services.gateway.fetch import Fetcher, FetchFailure, _raise_for
from services.proto_gen.imx.v1 import events_pb2

OBJECT = b"\0" * 128 + b"DICM" + b"z" * 2000
Answer = Callable[[socket.socket, threading.Event], None]


def _endless_multipart(conn: socket.socket, stop: threading.Event) -> None:
    conn.sendall(
        b'HTTP/1.1 200 OK\r\nContent-Type: multipart/related; type="application/dicom"; boundary=B\r\n'
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    first = b"--B\r\nContent-Type: application/dicom\r\n\r\n" + OBJECT + b"\r\n--B\r\n\r\n"
    conn.sendall(b"%x\r\n%s\r\n" % (len(first), first))
    while not stop.is_set():
        conn.sendall(b"%x\r\n%s\r\n" % (65536, b"\xff" * 65536))


def _dripping(conn: socket.socket, stop: threading.Event) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/dicom\r\nContent-Length: %d\r\n\r\n" % len(OBJECT))
    for i in range(len(OBJECT)):
        if stop.wait(0.05):
            return
        conn.sendall(OBJECT[i : i + 1])


def _dripping_head(conn: socket.socket, stop: threading.Event) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\n")
    for _ in range(400):  # a head that never ends, a byte every 50 ms: 20 s
        if stop.wait(0.05):
            return
        conn.sendall(b"x")


@pytest.fixture
def serving() -> Iterator[Callable[[Answer], str]]:
    stop = threading.Event()
    listeners: list[socket.socket] = []

    def start(answer: Answer) -> str:
        listener = socket.create_server(("127.0.0.1", 0))
        listeners.append(listener)

        def answer_one(conn: socket.socket) -> None:
            with conn, contextlib.suppress(OSError):  # the gateway hung up: what the test wants
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(4096)
                answer(conn, stop)

        def run() -> None:  # an answer not framed by a length is asked for again on a new connection
            with contextlib.suppress(OSError):
                while not stop.is_set():
                    threading.Thread(target=answer_one, args=(listener.accept()[0],), daemon=True).start()

        threading.Thread(target=run, daemon=True).start()
        return f"http://127.0.0.1:{listener.getsockname()[1]}/dicomweb/studies/1/series/2/instances/3"

    yield start
    stop.set()
    for listener in listeners:
        listener.close()


def _delivery(url: str) -> events_pb2.PartnerDelivery:
    delivery = events_pb2.PartnerDelivery(retrieval_url=url)
    delivery.blob.size, delivery.blob.sha256 = len(OBJECT), hashlib.sha256(OBJECT).hexdigest()
    return delivery


def _fetch_within(fetcher: Fetcher, delivery: events_pb2.PartnerDelivery, seconds: float) -> object:
    result: list[object] = []

    def run() -> None:
        try:
            result.append(bytes(fetcher.fetch(delivery).data or b""))
        except FetchFailure as failure:
            result.append(failure)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert result, f"the fetch had not ended after {seconds} s"
    return result[0]


def test_a_multipart_answer_is_read_to_its_first_parts_end_not_to_an_endless_tail(
    serving: Callable[[Answer], str], tmp_path: Path
) -> None:
    fetcher = Fetcher("key", tmp_path)
    try:
        assert _fetch_within(fetcher, _delivery(serving(_endless_multipart)), 10) == OBJECT
    finally:
        fetcher.close()


def test_an_answer_slower_than_its_size_allows_fails_the_attempt(
    serving: Callable[[Answer], str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fetch, "READ_TIMEOUT_S", 0.5)  # each byte comes well within it
    fetcher = Fetcher("key", tmp_path)
    try:
        started = time.monotonic()
        failure = _fetch_within(fetcher, _delivery(serving(_dripping)), 10)
        assert isinstance(failure, FetchFailure) and (failure.detail, failure.retryable) == ("fetch-timeout", True)
        assert not failure.unavailable and time.monotonic() - started < 5  # spends an attempt, not waited for
    finally:
        fetcher.close()


@pytest.mark.parametrize(
    "answers",
    [
        pytest.param(["head"], id="plain-http"),
        # The path https takes, and plain HTTP's for an answer without a length: a first answer without a
        # Content-Length sends the fetch through http.client, where the second's head drips.
        pytest.param(["unframed", "head"], id="http.client"),
    ],
)
def test_an_answers_head_slower_than_the_fetch_allows_ends_the_fetch(
    serving: Callable[[Answer], str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, answers: list[str]
) -> None:
    """The fetch's time bound covered the body only: a head coming a byte at a time held the gateway."""
    monkeypatch.setattr(fetch, "READ_TIMEOUT_S", 0.5)  # each byte comes well within it
    by_name: dict[str, Answer] = {"head": _dripping_head, "unframed": _unframed}
    queue = iter(by_name[name] for name in answers)
    fetcher = Fetcher("key", tmp_path)
    try:
        failure = _fetch_within(fetcher, _delivery(serving(lambda conn, stop: next(queue)(conn, stop))), 5)
        assert isinstance(failure, FetchFailure) and failure.detail == "fetch-timeout", failure
        assert failure.unavailable, "no answer yet: the retrieval service is waited for, no attempt spent"
    finally:
        fetcher.close()


def _unframed(conn: socket.socket, stop: threading.Event) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/dicom\r\nConnection: close\r\n\r\n")


def _keep_alive(conn: socket.socket, stop: threading.Event) -> None:
    """Answers every request on the connection, each with a Content-Length (the first already read)."""
    answer = b"HTTP/1.1 200 OK\r\nContent-Type: application/dicom\r\nContent-Length: %d\r\n\r\n" % len(OBJECT)
    conn.sendall(answer + OBJECT)
    data = b""
    while not stop.is_set() and (piece := conn.recv(4096)):
        data += piece
        while b"\r\n\r\n" in data:
            data = data.split(b"\r\n\r\n", 1)[1]
            conn.sendall(answer + OBJECT)


def test_a_kept_alive_connection_serves_the_next_fetch_on_the_direct_path(
    serving: Callable[[Answer], str], tmp_path: Path
) -> None:
    """The path https takes: reading pieces as they arrive left each response open, and the next request on
    the kept-alive connection failed (ResponseNotReady), taken for the service being away."""
    url = serving(_keep_alive)
    fetcher = Fetcher("key", tmp_path)
    try:
        for _ in range(3):
            held = fetch._Held()
            digest, size = fetcher._download_direct(urlsplit(url), len(OBJECT), held, time.monotonic() + 30)
            assert (digest, size, bytes(held.value())) == (hashlib.sha256(OBJECT).hexdigest(), len(OBJECT), OBJECT)
    finally:
        fetcher.close()


def test_a_redirect_is_waited_for_not_every_instance_dead_lettered() -> None:
    """An http URL moved to https answers every fetch alike: dead-lettering the feed fixed nothing."""
    with pytest.raises(FetchFailure) as failure:
        _raise_for(308)
    assert (failure.value.retryable, failure.value.unavailable) == (True, True)


def test_an_answer_said_to_be_compressed_that_is_not_fails_the_attempt(tmp_path: Path) -> None:
    """Through an httpx client (a proxy's), httpx raised DecodingError out of the fetch: a traceback."""
    asked: list[str] = []

    def broken_gzip(request: httpx.Request) -> httpx.Response:
        asked.append(request.headers["accept-encoding"])
        return httpx.Response(200, headers={"Content-Encoding": "gzip"}, content=b"not gzip at all")

    fetcher = Fetcher("key", tmp_path, httpx.Client(transport=httpx.MockTransport(broken_gzip)))
    try:
        with pytest.raises(FetchFailure) as failure:
            fetcher.fetch(_delivery("http://delivery.test/o"))
    finally:
        fetcher.close()
    assert (failure.value.detail, failure.value.retryable) == ("body-torn", True) and asked == ["identity"]
