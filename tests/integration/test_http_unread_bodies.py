"""Requests whose bodies the app does not read, on every imx HTTP server (services/common/http_server.py).

A body that turns out malformed part-way (a bad chunk) is answered 400 and closed, and nothing is logged
as an application error. A request answered before its body was read (a refusal) has the rest of its
body read and dropped, but not for longer than DRAIN_AFTER_ANSWER_S.

Before, when the route answered at once (a 404, a refusal from a check that reads no body), its answer met
h11 already in its error state: uvicorn logged "Exception in ASGI application" at error level with a
traceback, on every service, for a client's mistake."""

from __future__ import annotations

import logging
import socket
import time

import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from services.common import http_server
from services.common.http_server import HttpServer
from tests.raw_http import read_answer

BAD_CHUNK = b"Transfer-Encoding: chunked\r\n\r\nZZ\r\n"


@pytest.fixture
def server():
    app = FastAPI()

    @app.post("/busy")
    async def busy() -> JSONResponse:  # answers without reading the body, the connection kept
        return JSONResponse({"detail": "busy"}, status_code=429)

    @app.post("/refuse")
    async def refuse() -> JSONResponse:  # answers without reading the body, as ingest's 429 does
        return JSONResponse({"detail": "busy"}, status_code=429, headers={"Connection": "close"})

    running = HttpServer(app, "127.0.0.1", 0, name="malformed-test")
    running.start()
    yield running
    running.stop()


def _answer(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        client.sendall(request)
        answer = b""
        while chunk := client.recv(65536):
            answer += chunk
    return answer


@pytest.mark.parametrize(
    "request_head",
    [b"GET /no-such-route HTTP/1.1\r\nHost: t\r\n", b"POST /refuse HTTP/1.1\r\nHost: t\r\n"],
    ids=["unknown-route", "answered-without-reading"],
)
def test_a_bad_chunk_is_a_400_and_no_application_error(server, request_head, caplog) -> None:
    with caplog.at_level(logging.INFO):
        answer = _answer(server.port, request_head + BAD_CHUNK)
    assert answer.startswith(b"HTTP/1.1 400"), answer[:80]
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]


@pytest.mark.parametrize("route", ["/refuse", "/busy"], ids=["closing", "draining"])
def test_a_bad_chunk_after_an_early_answer_only_closes_the_connection(server, caplog, route: str) -> None:
    """ "/busy" keeps the connection to read the body and drop it: a bad chunk then reached h11 after the
    answer, which could not frame a 400, and asyncio logged a fatal protocol error with a traceback."""
    with caplog.at_level(logging.INFO), socket.create_connection(("127.0.0.1", server.port), timeout=10) as client:
        client.sendall(f"POST {route} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n".encode())
        answer = b""
        while b'"busy"' not in answer:
            chunk = client.recv(65536)
            assert chunk, answer
            answer += chunk
        try:
            client.sendall(b"ZZ\r\n")
            while client.recv(65536):
                pass
        except ConnectionResetError:  # closed by the server with our bytes unread: as good as a close
            pass
    assert answer.startswith(b"HTTP/1.1 429")
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not errors, [r.getMessage() for r in errors]


def test_a_body_still_dribbling_in_after_its_answer_is_cut_off(server, monkeypatch) -> None:
    monkeypatch.setattr(http_server, "DRAIN_AFTER_ANSWER_S", 1.0)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as client:
        client.sendall(b"POST /busy HTTP/1.1\r\nHost: t\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 1000)
        assert read_answer(client).startswith(b"HTTP/1.1 429")
        started = time.monotonic()
        closed = False
        while not closed and time.monotonic() - started < 5:
            time.sleep(0.1)
            try:
                client.sendall(b"x" * 100)  # a byte stream that never ends the body
                closed = client.recv(1, socket.MSG_DONTWAIT) == b""
            except BlockingIOError:
                pass
            except OSError:  # reset: closed with our bytes unread
                closed = True
    assert closed
    assert 0.8 < time.monotonic() - started < 3
