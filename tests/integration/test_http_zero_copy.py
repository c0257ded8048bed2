"""The imx HTTP server's zero-copy send (services/common/http_server.py): a response may hand it a file
(the ASGI extension `http.response.zerocopysend`), whose bytes the kernel sends; the answer is the
file's bytes exactly, framed by its Content-Length or chunked, and the connection stays usable."""

from __future__ import annotations

import os
import socket
import struct
import threading
from pathlib import Path

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from services.common.http_server import ZERO_COPY_SEND, HttpServer


class _FileAnswer(Response):
    def __init__(self, path: Path, offset: int, count: int, length_header: bool) -> None:
        self.path, self.offset, self.count = path, offset, count
        super().__init__(None, headers={"content-length": str(count)} if length_header else {"x-chunked": "1"})
        if not length_header:
            self.raw_headers = [(name, value) for name, value in self.raw_headers if name != b"content-length"]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert ZERO_COPY_SEND in scope.get("extensions", {}), "the server offers no zero-copy send"
        with self.path.open("rb") as handle:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            await send({"type": ZERO_COPY_SEND, "file": handle, "offset": self.offset, "count": self.count})


def test_a_file_is_sent_by_the_kernel_as_the_answer_body_on_a_kept_alive_connection(tmp_path: Path) -> None:
    content = os.urandom(3 * 1024 * 1024 + 17)  # larger than a socket's send buffer: sent in several goes
    path = tmp_path / "object.bin"
    path.write_bytes(content)

    async def whole(_request: Request) -> Response:
        return _FileAnswer(path, 0, len(content), length_header=True)

    async def middle(_request: Request) -> Response:
        return _FileAnswer(path, 1000, 70_000, length_header=True)

    async def chunked(_request: Request) -> Response:
        return _FileAnswer(path, 5, 100_000, length_header=False)

    app = Starlette(routes=[Route("/whole", whole), Route("/middle", middle), Route("/chunked", chunked)])
    server = HttpServer(app, "127.0.0.1", 0, name="zero-copy-test")  # type: ignore[arg-type]
    server.start()
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{server.port}", timeout=10) as client:
            for _ in range(2):
                answer = client.get("/whole")
                assert answer.status_code == 200
                assert answer.headers["content-length"] == str(len(content))
                assert answer.content == content
            assert client.get("/middle").content == content[1000:71_000]
            framed = client.get("/chunked")
            assert framed.headers.get("transfer-encoding") == "chunked"
            assert framed.content == content[5:100_005]
            assert client.get("/whole").content == content  # the same connection, still in step
            assert len(server._server.server_state.connections) == 1
    finally:
        server.stop()


def test_a_client_that_hangs_up_part_way_is_not_told_to_the_sender_as_a_whole_answer(tmp_path: Path) -> None:
    """An ASGI send to a client that is gone returns as if it had gone out: the sender learns from the
    message whether every byte was handed to the kernel (delivery's retrieval event counts the bytes)."""
    path = tmp_path / "large.bin"
    with path.open("wb") as handle:
        handle.truncate(256 * 1024 * 1024)  # far more than the socket buffers hold
    told: list[object] = []
    done = threading.Event()

    class Told(_FileAnswer):
        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            with self.path.open("rb") as handle:
                await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
                message = {"type": ZERO_COPY_SEND, "file": handle, "offset": 0, "count": self.count}
                await send(message)
                told.append(message.get("whole"))
                done.set()

    async def large(_request: Request) -> Response:
        return Told(path, 0, path.stat().st_size, length_header=True)

    async def small(_request: Request) -> Response:
        return Told(path, 0, 1000, length_header=True)

    server = HttpServer(Starlette(routes=[Route("/large", large), Route("/small", small)]), "127.0.0.1", 0)  # type: ignore[arg-type]
    server.start()
    try:
        assert httpx.get(f"http://127.0.0.1:{server.port}/small", timeout=10).status_code == 200
        assert done.wait(10) and told == [True]
        done.clear()
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        sock.sendall(b"GET /large HTTP/1.1\r\nHost: t\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # a reset, at once
        sock.close()
        assert done.wait(30), "the send returned"
        assert told == [True, False]
    finally:
        server.stop()
