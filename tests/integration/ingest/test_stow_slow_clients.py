"""STOW-RS against clients that stall, on real sockets: one that sends part of its headers and stops (or
sends them a byte at a time) is closed after the header timeout; one that sends its headers and stops is
answered 408 and closed within the body timeout; an organisation past its cap of open uploads is refused
429 at once; and none of that, nor a client that hangs up mid-body, logs a traceback."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from services.common.blob_store import LocalBlobStore
from services.common.http_server import HttpServer
from services.common.topics import Topics
from services.ingest.acceptance import Acceptance
from services.ingest.receipts import MemoryReceiptStore
from services.ingest.stow import StowContext, create_app
from services.ingest.upload_slots import UploadSlots
from tests.raw_http import exchange, read_answer
from tests.unit.ingest.samples import BOUNDARY, RecordingBus, mr_study, multipart_body, stow_content_type
from tests.waiting import wait_for

KEY, OTHER_KEY = "imx_test-key", "imx_other-key"
BODY_TIMEOUT_S = 1.0
HEADER_TIMEOUT_S = 1.0
CLIENTS = 200  # the size of the original finding: 200 stalled uploads, all still open after 62 s


class ApiKeys:
    def org_for_api_key(self, api_key: str) -> str | None:
        return {KEY: "trust-a", OTHER_KEY: "trust-b"}.get(api_key)


ServerFactory = Callable[..., HttpServer]


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[ServerFactory]:
    servers: list[HttpServer] = []

    def start(
        uploads_per_org: int,
        body_timeout_s: float = BODY_TIMEOUT_S,
        max_parts: int = 10_000,
        uploads: int | None = None,
    ) -> HttpServer:
        acceptance = Acceptance(
            blobs=LocalBlobStore(tmp_path),
            receipts=MemoryReceiptStore(),
            bus=RecordingBus(),
            topics=Topics("t-"),
            max_instance_bytes=400_000,
        )
        slots = UploadSlots(uploads_per_org, uploads)
        context = StowContext(acceptance, ApiKeys(), body_timeout_s, slots, max_parts)
        http = HttpServer(create_app(context), "127.0.0.1", 0, grace_s=1, header_timeout_s=HEADER_TIMEOUT_S)
        http.start()
        SLOTS[http.port] = slots
        servers.append(http)
        return http

    yield start
    for http in servers:
        http.stop()


SLOTS: dict[int, UploadSlots] = {}  # each test server's, by port


def _held(port: int, uploads: int) -> None:
    """Wait until the server on `port` has `uploads` holding their slots (authenticated and reading): a
    fixed sleep was too short on a busy machine, and the upload meant to be refused was read instead."""
    wait_for(lambda: SLOTS[port].open_total >= uploads, 10, f"{uploads} uploads holding their slots")


def _stalled_upload(port: int, key: str = KEY) -> socket.socket:
    """Headers of a 1 MB upload and the start of its first part, then nothing."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(
        (
            "POST /dicomweb/studies HTTP/1.1\r\nHost: imx\r\n"
            f"Authorization: Bearer {key}\r\nContent-Type: {stow_content_type()}\r\nContent-Length: 1000000\r\n\r\n"
            f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n"
        ).encode()
        + b"\0" * 128
    )
    return sock


def _half_headers(port: int) -> socket.socket:
    """The request line and some headers of an upload, without the blank line that ends them."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(f"POST /dicomweb/studies HTTP/1.1\r\nHost: imx\r\nAuthorization: Bearer {KEY}\r\n".encode())
    return sock


def _read_to_close(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes; socket.timeout (10 s) when it does not."""
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def _tracebacks(records: list[logging.LogRecord]) -> list[str]:
    return [r.getMessage() for r in records if r.exc_info or "Traceback" in r.getMessage()]


def test_connections_whose_headers_stop_are_closed_after_the_header_timeout(
    start_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    server = start_server(8)
    started = time.monotonic()
    sockets = [_half_headers(server.port) for _ in range(CLIENTS)]
    try:
        answers = [_read_to_close(sock) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()
    elapsed = time.monotonic() - started
    assert HEADER_TIMEOUT_S * 0.9 < elapsed < HEADER_TIMEOUT_S + 5
    assert answers == [b""] * CLIENTS  # closed without an answer: there was no request to answer
    assert _tracebacks(caplog.records) == []


def test_headers_sent_a_byte_at_a_time_do_not_extend_the_deadline(start_server: ServerFactory) -> None:
    server = start_server(8)
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: imx\r\nX-Padding: ")
        closed = False
        while not closed and time.monotonic() - started < HEADER_TIMEOUT_S + 3:
            time.sleep(0.05)
            try:
                sock.sendall(b"a")
            except OSError:  # broken pipe or reset: the server has closed
                closed = True
    assert closed
    assert time.monotonic() - started < HEADER_TIMEOUT_S + 1


def test_a_kept_alive_connection_gets_a_new_header_deadline_per_request(start_server: ServerFactory) -> None:
    server = start_server(8)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        for _ in range(3):  # 3 requests over 3 x 0.6 s: longer than one header timeout in total
            time.sleep(HEADER_TIMEOUT_S * 0.6)
            answer = exchange(sock, b"GET /healthz HTTP/1.1\r\nHost: imx\r\n\r\n", b'{"status":"ok"}')
            assert answer.startswith(b"HTTP/1.1 200")


def test_healthz_answers_head_without_a_body(start_server: ServerFactory) -> None:
    server = start_server(8)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        head = exchange(sock, b"HEAD /healthz HTTP/1.1\r\nHost: imx\r\n\r\n", b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        # Nothing follows the headers: the next answer on the connection is the next request's.
        assert exchange(sock, b"GET /healthz HTTP/1.1\r\nHost: imx\r\n\r\n", b'{"status":"ok"}').startswith(
            b"HTTP/1.1 200"
        )


def test_uploads_that_stop_are_answered_408_and_closed_within_the_timeout(
    start_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    server = start_server(CLIENTS)
    started = time.monotonic()
    sockets = [_stalled_upload(server.port) for _ in range(CLIENTS)]
    try:
        answers = [_read_to_close(sock) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()
    assert time.monotonic() - started < BODY_TIMEOUT_S + 5
    assert all(answer.startswith(b"HTTP/1.1 408") for answer in answers), answers[0][:200]
    assert _tracebacks(caplog.records) == []


def test_uploads_past_the_organisations_cap_are_refused_429_and_others_are_not(
    start_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    server = start_server(8, body_timeout_s=10.0)  # the eight hold their slots while the rest arrive
    held = [_stalled_upload(server.port) for _ in range(8)]
    _held(server.port, 8)
    refused = [_stalled_upload(server.port) for _ in range(CLIENTS - 8)]
    other_org = _stalled_upload(server.port, OTHER_KEY)
    try:
        refusals = [read_answer(sock) for sock in refused]  # answered at once; kept open to drain the body
        held_answers = [_read_to_close(sock) for sock in held]
        other_answer = _read_to_close(other_org)
        after = _stalled_upload(server.port)  # the eight timed out: their slots are free again
        # It is answered 408 only when its own body timeout (10 s) ends: wait longer than that for it.
        after.settimeout(30)
        after_answer = _read_to_close(after)
        after.close()
    finally:
        for sock in [*held, *refused, other_org]:
            sock.close()
    assert all(answer.startswith(b"HTTP/1.1 429") for answer in refusals), refusals[0][:200]
    assert all(b"\r\nretry-after: 5\r\n" in answer.lower() for answer in refusals)
    assert all(answer.startswith(b"HTTP/1.1 408") for answer in held_answers)
    assert other_answer.startswith(b"HTTP/1.1 408")  # trust-b was not refused for trust-a's uploads
    assert after_answer.startswith(b"HTTP/1.1 408")
    busy = [r for r in caplog.records if r.getMessage().startswith("stow-rs upload refused")]
    assert len(busy) == CLIENTS - 8
    assert {getattr(r, "org", None) for r in busy} == {"trust-a"}
    assert _tracebacks(caplog.records) == []


def test_uploads_past_the_services_cap_are_refused_503_whichever_organisation_sends(
    start_server: ServerFactory,
) -> None:
    """Each organisation within its own cap, all of them together past the service's: every upload may hold
    an instance twice in memory, so the pod's memory bounds how many may be open at once."""
    server = start_server(8, body_timeout_s=10.0, uploads=2)
    held = [_stalled_upload(server.port), _stalled_upload(server.port, OTHER_KEY)]
    _held(server.port, 2)
    refused = _stalled_upload(server.port, OTHER_KEY)
    try:
        answer = read_answer(refused)
    finally:
        for sock in [*held, refused]:
            sock.close()
    assert answer.startswith(b"HTTP/1.1 503"), answer[:200]
    assert b"\r\nretry-after: 5\r\n" in answer.lower() and b"the service already has 2 uploads open" in answer


def test_a_refused_upload_sent_whole_before_reading_gets_its_429(start_server: ServerFactory) -> None:
    """As Python's http.client (and `requests`) send: the whole body, then read. Closed with the body
    unread, the server reset the connection and such a client never saw the 429 (every time with 5 MB)."""
    server = start_server(1, body_timeout_s=10.0)
    holder = _stalled_upload(server.port)
    _held(server.port, 1)  # it holds the organisation's one slot
    size = 5_000_000
    head = (
        "POST /dicomweb/studies HTTP/1.1\r\nHost: imx\r\n"
        f"Authorization: Bearer {KEY}\r\nContent-Type: {stow_content_type()}\r\nContent-Length: {size}\r\n\r\n"
    ).encode()
    try:
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
                sock.sendall(head + b"\0" * size)
                answer = read_answer(sock)
                assert answer.startswith(b"HTTP/1.1 429"), answer[:200]
                # The body was read to its end: the connection carries the next request.
                assert exchange(sock, b"GET /healthz HTTP/1.1\r\nHost: imx\r\n\r\n", b'{"status":"ok"}').startswith(
                    b"HTTP/1.1 200"
                )
    finally:
        holder.close()


def test_an_upload_over_the_instance_cap_sent_whole_before_reading_gets_its_413(start_server: ServerFactory) -> None:
    """Answered with "Connection: close", the rest of the body was never read: a client sending it all before
    reading got a reset connection, not the 413 (three times of three with 24 MB)."""
    server = start_server(8, max_parts=2)
    body = multipart_body(mr_study(3, n=3) * 60)
    head = (
        "POST /dicomweb/studies HTTP/1.1\r\nHost: imx\r\n"
        f"Authorization: Bearer {KEY}\r\nContent-Type: {stow_content_type()}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
            sock.sendall(head + body)
            answer = read_answer(sock)
            assert answer.startswith(b"HTTP/1.1 413"), answer[:200]


def test_clients_that_hang_up_mid_body_log_no_traceback(
    start_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    server = start_server(CLIENTS)
    for sock in [_stalled_upload(server.port) for _ in range(CLIENTS)]:
        time.sleep(0.01)
        sock.close()
    time.sleep(BODY_TIMEOUT_S + 1)
    assert _tracebacks(caplog.records) == []


def test_uploads_still_open_at_shutdown_are_answered_503_and_closed_without_tracebacks(
    start_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    # The original finding: closing 200 stalled uploads logged 200 stack traces.
    caplog.set_level(logging.INFO)
    server = start_server(CLIENTS, body_timeout_s=60.0)
    sockets = [_stalled_upload(server.port) for _ in range(CLIENTS)]
    try:
        time.sleep(1.0)  # every upload is in the route, waiting for its body
        server.stop()  # grace_s=1: uvicorn cancels them all
        answers = [_read_to_close(sock) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()
    assert all(answer.startswith(b"HTTP/1.1 503") for answer in answers), answers[0][:200]
    assert all(b"\r\nretry-after: 30\r\n" in answer.lower() for answer in answers)
    assert _tracebacks(caplog.records) == []
    [summary] = [r for r in caplog.records if r.getMessage() == "requests cut off at shutdown"]
    assert getattr(summary, "count", None) == CLIENTS
