"""The gateway's fetches over real sockets on localhost: one keep-alive connection per thread, a
connection the server closed is replaced, failures are classified as before, a proxy in the
environment is still used."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from services.gateway import fetch as fetch_module
from services.gateway.fetch import Fetcher, FetchFailure
from services.gateway.fetched import IN_MEMORY_UP_TO, Fetched
from services.proto_gen.imx.v1 import events_pb2
from tests.integration.gateway.peers import RetrievalServer
from tests.tls_certs import other_ca, server_certificate
from tools.devstack import free_port

KEY = "partner-key"


@pytest.fixture
def server() -> Iterator[RetrievalServer]:
    served = RetrievalServer(KEY, keep_alive=True)
    try:
        yield served
    finally:
        served.close()


def delivery(url: str, body: bytes) -> events_pb2.PartnerDelivery:
    return events_pb2.PartnerDelivery(
        meta=events_pb2.EventMeta(event_id="d1"),
        blob=events_pb2.BlobRef(sha256=hashlib.sha256(body).hexdigest(), size=len(body)),
        retrieval_url=url,
    )


def serve(server: RetrievalServer, name: str, size: int) -> events_pb2.PartnerDelivery:
    body = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    server.objects[f"/{name}"] = body
    return delivery(f"{server.base}/{name}", body)


def test_fetches_share_one_connection_per_thread(server: RetrievalServer, tmp_path: Path) -> None:
    fetcher = Fetcher(KEY, tmp_path)
    try:
        for n, size in enumerate((0, 1, 600_000, 2_500_000, IN_MEMORY_UP_TO + 1)):
            wanted = serve(server, f"o{n}", size)
            fetched = fetcher.fetch(wanted)
            with fetched.open() as handle:
                assert hashlib.sha256(handle.read()).hexdigest() == wanted.blob.sha256
            assert (fetched.data is None) == (size > IN_MEMORY_UP_TO), "small objects are held in memory"
            fetched.discard()
        assert (server.requests, server.connections) == (5, 1)
        done: list[Fetched] = []
        other = threading.Thread(target=lambda: done.append(fetcher.fetch(serve(server, "t", 10))))
        other.start()
        other.join()
        assert server.connections == 2, "another thread, its own connection"
    finally:
        fetcher.close()


def test_a_connection_the_server_closed_is_replaced(server: RetrievalServer, tmp_path: Path) -> None:
    server.close_after = True
    fetcher = Fetcher(KEY, tmp_path)
    try:
        for n in range(3):
            fetcher.fetch(serve(server, f"o{n}", 1000)).discard()
        assert server.requests == 3 and server.connections == 3
    finally:
        fetcher.close()


def test_failures_are_classified_as_before(
    server: RetrievalServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
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
        fetcher.fetch(serve(server, "after", 10)).discard()  # the half-read answer's connection was dropped
        refused = Fetcher("wrong", tmp_path)
        with pytest.raises(FetchFailure) as failure:
            refused.fetch(serve(server, "o", 10))
        assert failure.value.refused
        refused.close()
        port = free_port()  # nothing listens there
        with pytest.raises(FetchFailure) as failure:
            fetcher.fetch(delivery(f"http://127.0.0.1:{port}/o", b"x"))
        assert (failure.value.detail, failure.value.unavailable) == ("source-unreachable", True)
        monkeypatch.setattr(fetch_module, "READ_TIMEOUT_S", 0.3)
        server.stall = True
        slow = Fetcher(KEY, tmp_path)
        with pytest.raises(FetchFailure) as failure:
            slow.fetch(serve(server, "slow", 10))
        # The headers came and then nothing: it answered, so the stalled answer spends attempts.
        assert (failure.value.detail, failure.value.retryable, failure.value.unavailable) == (
            "fetch-timeout",
            True,
            False,
        )
        slow.close()
    finally:
        fetcher.close()
    assert list(tmp_path.iterdir()) == [], "no temp file is left behind"


def test_a_proxy_in_the_environment_is_still_used(
    server: RetrievalServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()  # nothing listens there
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
        direct.fetch(serve(server, "o", 10)).discard()
    finally:
        direct.close()


def test_https_trusts_what_httpx_trusted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CA in SSL_CERT_FILE (httpx's rule) is trusted; a server signed by another CA is refused,
    as a server that cannot be reached."""
    tls = server_certificate(tmp_path / "tls")
    state = RetrievalServer(KEY, keep_alive=True, tls=tls)
    incoming = tmp_path / "incoming"
    try:
        monkeypatch.setenv("SSL_CERT_FILE", str(tls.ca_file))
        fetcher = Fetcher(KEY, incoming)
        fetcher.fetch(serve(state, "o1", 70_000)).discard()
        fetcher.fetch(serve(state, "o2", 10)).discard()
        fetcher.close()
        assert state.connections == 1
        monkeypatch.setenv("SSL_CERT_FILE", str(other_ca(tmp_path / "other-ca.pem")))
        stranger = Fetcher(KEY, incoming)
        with pytest.raises(FetchFailure) as failure:
            stranger.fetch(serve(state, "o3", 10))
        assert (failure.value.detail, failure.value.unavailable) == ("source-unreachable", True)
        stranger.close()
    finally:
        state.close()


def test_an_answer_not_framed_by_a_content_length_is_read_by_http_client(tmp_path: Path) -> None:
    """The plain GET takes only a Content-Length; a chunked answer is asked for again through http.client."""
    body = bytes(range(256)) * 300
    requests: list[str] = []

    class Chunked(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            requests.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "application/dicom")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for piece in (body[:1000], body[1000:]):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\n\r\n")

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Chunked)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    fetcher = Fetcher(KEY, tmp_path)
    try:
        fetched = fetcher.fetch(delivery(f"http://127.0.0.1:{httpd.server_address[1]}/o", body))
        assert fetched.data == body
        assert requests == ["/o", "/o"]
    finally:
        fetcher.close()
        httpd.shutdown()
        httpd.server_close()
