"""STOW-RS against clients that send their headers and stop, on real sockets: each is answered 408 and
closed within the body timeout, and neither that nor a client that hangs up mid-body logs a traceback."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.common.blob_store import LocalBlobStore
from services.common.http_server import HttpServer
from services.common.topics import Topics
from services.ingest.acceptance import Acceptance
from services.ingest.receipts import MemoryReceiptStore
from services.ingest.stow import StowContext, create_app
from tests.unit.ingest.samples import BOUNDARY, RecordingBus, stow_content_type

KEY = "imx_test-key"
BODY_TIMEOUT_S = 1.0
CLIENTS = 20


class ApiKeys:
    def org_for_api_key(self, api_key: str) -> str | None:
        return "trust-a" if api_key == KEY else None


@pytest.fixture
def server(tmp_path: Path) -> Iterator[HttpServer]:
    acceptance = Acceptance(
        blobs=LocalBlobStore(tmp_path), receipts=MemoryReceiptStore(), bus=RecordingBus(), topics=Topics("t-"),
        max_instance_bytes=400_000,
    )
    http = HttpServer(create_app(StowContext(acceptance, ApiKeys(), BODY_TIMEOUT_S)), "127.0.0.1", 0, grace_s=1)
    http.start()
    yield http
    http.stop()


def _stalled_upload(port: int) -> socket.socket:
    """Headers of a 1 MB upload and the start of its first part, then nothing."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(
        (
            "POST /dicomweb/studies HTTP/1.1\r\nHost: imx\r\n"
            f"Authorization: Bearer {KEY}\r\nContent-Type: {stow_content_type()}\r\nContent-Length: 1000000\r\n\r\n"
            f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n"
        ).encode()
        + b"\0" * 128
    )
    return sock


def _read_to_close(sock: socket.socket) -> bytes:
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def _tracebacks(records: list[logging.LogRecord]) -> list[str]:
    return [r.getMessage() for r in records if r.exc_info or "Traceback" in r.getMessage()]


def test_uploads_that_stop_are_answered_408_and_closed_within_the_timeout(
    server: HttpServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    started = time.monotonic()
    sockets = [_stalled_upload(server.port) for _ in range(CLIENTS)]
    try:
        answers = [_read_to_close(sock) for sock in sockets]  # recv times out (10 s) when not closed
    finally:
        for sock in sockets:
            sock.close()
    assert time.monotonic() - started < BODY_TIMEOUT_S + 5
    assert all(answer.startswith(b"HTTP/1.1 408") for answer in answers), answers[0][:200]
    assert _tracebacks(caplog.records) == []


def test_clients_that_hang_up_mid_body_log_no_traceback(server: HttpServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    for sock in [_stalled_upload(server.port) for _ in range(CLIENTS)]:
        time.sleep(0.01)
        sock.close()
    time.sleep(BODY_TIMEOUT_S + 1)
    assert _tracebacks(caplog.records) == []
