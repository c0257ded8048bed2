"""A client that asks for an answer and never reads it: the connection and the answer's state were held
for ever. Closed once nothing was taken for WRITE_STALL_S (here shortened)."""

from __future__ import annotations

import socket
import time

import pytest
from fastapi import FastAPI
from fastapi.responses import StreamingResponse

from services.common import http_server
from services.common.http_server import HttpServer
from tools.devstack import free_port

SIZE = 16 * 1024 * 1024


def test_an_answer_its_client_never_reads_is_given_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http_server, "WRITE_STALL_S", 1.0)
    app = FastAPI()

    @app.get("/streamed")
    def streamed() -> StreamingResponse:
        return StreamingResponse((bytes(65536) for _ in range(SIZE // 65536)), media_type="application/dicom")

    port = free_port()
    server = HttpServer(app, "127.0.0.1", port, grace_s=1, name="stall-test", header_timeout_s=10)
    server.start()
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.connect(("127.0.0.1", port))
    client.sendall(b"GET /streamed HTTP/1.1\r\nHost: x\r\n\r\n")
    try:
        time.sleep(4)  # reading nothing: past WRITE_STALL_S
        received, ended = 0, False
        client.settimeout(5)
        while received <= SIZE:  # what the kernels buffered before the close, then its end
            try:
                piece = client.recv(1 << 20)
            except ConnectionResetError:
                ended = True
                break
            except TimeoutError:
                break
            if not piece:
                ended = True
                break
            received += len(piece)
        assert ended and received < SIZE, "the connection was held open for a client that read nothing"
    finally:
        client.close()
        server.stop()
