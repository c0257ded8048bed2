"""The imx HTTP server's direct path (services/common/http_direct.py, http_server.py): a plain GET that
the server's answerer answers is written with the file's bytes by the server itself, on the same
kept-alive connection as the ASGI app's answers; the answer is the same bytes and headers the ASGI
way would give; whatever the answerer declines, or cannot be a plain GET, is the app's; a file that
turns out shorter than its answer says closes the connection (a broken transfer, never a short one)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Scope

from services.common.http_direct import FileAnswer
from services.common.http_server import HttpServer


def _server(path: Path, count: int, head: bytes, finished: list[bool]) -> HttpServer:
    async def asgi(_request: Request) -> Response:
        return Response(b"from the app", headers={"x-way": "asgi"})

    def direct(scope: Scope) -> FileAnswer | None:
        if scope["path"] != "/direct":
            return None
        file = path.open("rb")

        def done(whole: bool) -> None:
            file.close()
            finished.append(whole)

        headers = [(b"content-length", str(len(head) + count).encode()), (b"x-way", b"direct")]
        return FileAnswer(200, headers, head, file, 10, count, done)

    app = Starlette(routes=[Route("/direct", asgi), Route("/other", asgi)])
    return HttpServer(app, "127.0.0.1", 0, name="direct-test", direct=direct)  # type: ignore[arg-type]


def test_a_direct_answer_is_the_files_bytes_beside_the_apps_answers_on_one_connection(tmp_path: Path) -> None:
    content = os.urandom(3 * 1024 * 1024 + 17)  # larger than a socket's send buffer: the rest by asyncio
    path = tmp_path / "object.bin"
    path.write_bytes(content)
    finished: list[bool] = []
    server = _server(path, len(content) - 10, b"HEAD", finished)
    server.start()
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{server.port}", timeout=10) as client:
            for _ in range(3):
                answer = client.get("/direct")
                assert answer.status_code == 200
                assert answer.headers["x-way"] == "direct"
                assert answer.headers["content-length"] == str(len(content) - 6)
                assert "date" in answer.headers
                assert answer.content == b"HEAD" + content[10:]
                assert client.get("/other").content == b"from the app"  # declined: the app's
            # Not a plain GET: the app's, also on the path the answerer takes.
            assert client.post("/direct", content=b"x").status_code == 405
            assert client.get("/direct", headers={"connection": "close"}).headers["x-way"] == "asgi"
    finally:
        server.stop()
    assert finished == [True, True, True]


def test_a_file_shorter_than_its_answer_closes_the_connection(tmp_path: Path) -> None:
    path = tmp_path / "object.bin"
    path.write_bytes(b"x" * 1000)
    finished: list[bool] = []
    server = _server(path, 5000, b"", finished)  # says 5,000 bytes from offset 10: the file has 990
    server.start()
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(b"GET /direct HTTP/1.1\r\nHost: test\r\n\r\n")
            received = b""
            while chunk := sock.recv(65536):
                received += chunk
        assert received.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b"content-length: 5000\r\n" in received
        assert len(received.partition(b"\r\n\r\n")[2]) == 990  # then closed: a broken transfer
    finally:
        server.stop()
    assert finished == [False]
