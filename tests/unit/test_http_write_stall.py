"""A client that asks for an answer and never reads it: the connection, its descriptor and the answer's
open file were held for ever. Closed once nothing was taken for WRITE_STALL_S (here shortened)."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.responses import StreamingResponse

from services.common import http_server
from services.common.http_direct import FileAnswer
from services.common.http_server import HttpServer
from tools.devstack import free_port

SIZE = 16 * 1024 * 1024


def _stalled_client(port: int, path: str) -> socket.socket:
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.connect(("127.0.0.1", port))
    client.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    return client


@pytest.mark.parametrize("path", ["/direct", "/streamed"])
def test_an_answer_its_client_never_reads_is_given_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    monkeypatch.setattr(http_server, "WRITE_STALL_S", 1.0)
    monkeypatch.setattr(http_server, "MIN_READ_RATE", SIZE)  # the file's deadline: WRITE_STALL_S
    blob = tmp_path / "object"
    blob.write_bytes(os.urandom(SIZE))
    finished: list[bool] = []

    def direct(scope: dict[str, object]) -> FileAnswer | None:
        if scope["path"] != "/direct":
            return None
        file = open(blob, "rb")  # noqa: SIM115 - closed when the answer is finished

        def done(whole: bool) -> None:
            file.close()
            finished.append(whole)

        headers = [(b"content-type", b"application/dicom"), (b"content-length", str(SIZE).encode())]
        return FileAnswer(200, headers, b"", file, 0, SIZE, done)

    app = FastAPI()

    @app.get("/streamed")
    def streamed() -> StreamingResponse:
        def body() -> object:
            for _ in range(SIZE // 65536):
                yield bytes(65536)
            finished.append(True)

        return StreamingResponse(body(), media_type="application/dicom")

    port = free_port()
    server = HttpServer(app, "127.0.0.1", port, grace_s=1, name="stall-test", header_timeout_s=10, direct=direct)
    server.start()
    client = _stalled_client(port, path)
    try:
        time.sleep(4)  # reading nothing: past WRITE_STALL_S (and the file's deadline)
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
    if path == "/direct":
        assert finished == [False], "the answer's file was closed and the transfer counted as broken"
