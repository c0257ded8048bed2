"""The gateway's fetches over real sockets on localhost: one keep-alive connection per thread, a
connection the server closed is replaced, failures are classified as before, a proxy in the
environment is still used."""

from __future__ import annotations

import hashlib
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from services.gateway import fetch as fetch_module
from services.gateway.fetch import Fetcher, FetchFailure
from services.proto_gen.imx.v1 import events_pb2
from tests.tls_certs import ServerCertificate, other_ca, server_certificate

KEY = "partner-key"


@dataclass
class Server:
    """HTTP/1.1 with keep-alive; `close_after` answers end with the server closing the connection
    without saying so (as an idle timeout would); `stall` answers send headers and then nothing."""

    objects: dict[str, bytes] = field(default_factory=dict)
    connections: int = 0
    requests: int = 0
    close_after: bool = False
    stall: bool = False
    base: str = ""

    def start(self, tls: ServerCertificate | None = None) -> ThreadingHTTPServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                server.connections += 1
                super().setup()

            def do_GET(self) -> None:
                server.requests += 1
                if self.headers.get("Authorization") != f"Bearer {KEY}":
                    self.send_error(401)
                    return
                body = server.objects.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/dicom")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.stall:
                    threading.Event().wait(2)
                    return
                self.wfile.write(body)
                if server.close_after:
                    self.close_connection = True

            def log_message(self, *args: object) -> None:
                pass

        httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        httpd.daemon_threads = True
        self.base = f"http://127.0.0.1:{httpd.server_address[1]}"
        if tls is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(tls.cert_file, tls.key_file)
            httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
            self.base = self.base.replace("http://", "https://")
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        return httpd


@pytest.fixture
def server() -> Iterator[Server]:
    state = Server()
    httpd = state.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()


def delivery(url: str, body: bytes) -> events_pb2.PartnerDelivery:
    return events_pb2.PartnerDelivery(
        meta=events_pb2.EventMeta(event_id="d1"),
        blob=events_pb2.BlobRef(sha256=hashlib.sha256(body).hexdigest(), size=len(body)),
        retrieval_url=url,
    )


def serve(server: Server, name: str, size: int) -> events_pb2.PartnerDelivery:
    body = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    server.objects[f"/{name}"] = body
    return delivery(f"{server.base}/{name}", body)


def test_fetches_share_one_connection_per_thread(server: Server, tmp_path: Path) -> None:
    fetcher = Fetcher(KEY, tmp_path)
    try:
        for n, size in enumerate((0, 1, 600_000, 2_500_000)):
            wanted = serve(server, f"o{n}", size)
            path = fetcher.fetch(wanted)
            assert hashlib.sha256(path.read_bytes()).hexdigest() == wanted.blob.sha256
            path.unlink()
        assert (server.requests, server.connections) == (4, 1)
        done: list[Path] = []
        other = threading.Thread(target=lambda: done.append(fetcher.fetch(serve(server, "t", 10))))
        other.start()
        other.join()
        assert server.connections == 2, "another thread, its own connection"
    finally:
        fetcher.close()


def test_a_connection_the_server_closed_is_replaced(server: Server, tmp_path: Path) -> None:
    server.close_after = True
    fetcher = Fetcher(KEY, tmp_path)
    try:
        for n in range(3):
            fetcher.fetch(serve(server, f"o{n}", 1000)).unlink()
        assert server.requests == 3 and server.connections == 3
    finally:
        fetcher.close()


def test_failures_are_classified_as_before(server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fetcher = Fetcher(KEY, tmp_path)
    try:
        missing = delivery(f"{server.base}/nothing", b"x")
        with pytest.raises(FetchFailure) as failure:
            fetcher.fetch(missing)
        assert (failure.value.detail, failure.value.retryable) == ("http-404", False)
        wanted = serve(server, "big", 5000)
        wanted.blob.size = 100
        with pytest.raises(FetchFailure) as failure:
            fetcher.fetch(wanted)
        assert failure.value.detail == "size-mismatch"
        fetcher.fetch(serve(server, "after", 10)).unlink()  # the half-read answer's connection was dropped
        refused = Fetcher("wrong", tmp_path)
        with pytest.raises(FetchFailure) as failure:
            refused.fetch(serve(server, "o", 10))
        assert failure.value.refused
        refused.close()
        with socket.socket() as closed:
            closed.bind(("127.0.0.1", 0))
            port = closed.getsockname()[1]
        with pytest.raises(FetchFailure) as failure:
            fetcher.fetch(delivery(f"http://127.0.0.1:{port}/o", b"x"))
        assert (failure.value.detail, failure.value.unavailable) == ("source-unreachable", True)
        monkeypatch.setattr(fetch_module, "READ_TIMEOUT_S", 0.3)
        server.stall = True
        slow = Fetcher(KEY, tmp_path)
        with pytest.raises(FetchFailure) as failure:
            slow.fetch(serve(server, "slow", 10))
        assert (failure.value.detail, failure.value.retryable) == ("fetch-timeout", True)
        slow.close()
    finally:
        fetcher.close()
    assert list(tmp_path.iterdir()) == [], "no temp file is left behind"


def test_a_proxy_in_the_environment_is_still_used(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{port}")
    fetcher = Fetcher(KEY, tmp_path)
    try:
        with pytest.raises(FetchFailure) as failure:
            fetcher.fetch(serve(server, "o", 10))
        assert failure.value.detail == "source-unreachable" and server.requests == 0, "sent to the (absent) proxy"
    finally:
        fetcher.close()
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    direct = Fetcher(KEY, tmp_path)
    try:
        direct.fetch(serve(server, "o", 10)).unlink()
    finally:
        direct.close()


def test_https_trusts_what_httpx_trusted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CA in SSL_CERT_FILE (httpx's rule) is trusted; a server signed by another CA is refused,
    as a server that cannot be reached."""
    tls = server_certificate(tmp_path / "tls")
    state = Server()
    httpd = state.start(tls)
    incoming = tmp_path / "incoming"
    try:
        monkeypatch.setenv("SSL_CERT_FILE", str(tls.ca_file))
        fetcher = Fetcher(KEY, incoming)
        fetcher.fetch(serve(state, "o1", 70_000)).unlink()
        fetcher.fetch(serve(state, "o2", 10)).unlink()
        fetcher.close()
        assert state.connections == 1
        monkeypatch.setenv("SSL_CERT_FILE", str(other_ca(tmp_path / "other-ca.pem")))
        stranger = Fetcher(KEY, incoming)
        with pytest.raises(FetchFailure) as failure:
            stranger.fetch(serve(state, "o3", 10))
        assert (failure.value.detail, failure.value.unavailable) == ("source-unreachable", True)
        stranger.close()
    finally:
        httpd.shutdown()
        httpd.server_close()
