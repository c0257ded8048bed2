"""HTTPS on the shared HTTP server (STOW-RS, WADO-RS/QIDO-RS and the audit API all run on it): with a
certificate configured, a client that trusts it gets through, plain HTTP and clients that do not trust
it get nothing, none of that logs a traceback, and the header deadline holds over TLS too."""

from __future__ import annotations

import logging
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from services.audit.settings import AuditSettings
from services.common.http_server import HttpServer, TlsFiles
from services.delivery.settings import DeliverySettings
from services.ingest.settings import IngestSettings
from tests.tls_certs import ServerCertificate, server_certificate

HEADER_TIMEOUT_S = 1.0


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> ServerCertificate:
    return server_certificate(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def server(certificate: ServerCertificate) -> Iterator[HttpServer]:
    app = FastAPI()

    @app.get("/ping")
    def ping() -> dict[str, str]:
        return {"pong": "yes"}

    tls = TlsFiles(certificate.cert_file, certificate.key_file)
    http = HttpServer(app, "127.0.0.1", 0, grace_s=1, header_timeout_s=HEADER_TIMEOUT_S, tls=tls)
    http.start()
    yield http
    http.stop()


def _tracebacks(records: list[logging.LogRecord]) -> list[str]:
    return [r.getMessage() for r in records if r.exc_info or "Traceback" in r.getMessage()]


def test_a_client_that_trusts_the_certificate_gets_through_over_https(
    server: HttpServer, certificate: ServerCertificate
) -> None:
    trusting = ssl.create_default_context(cafile=certificate.ca_file)
    response = httpx.get(f"https://127.0.0.1:{server.port}/ping", verify=trusting, timeout=10)
    assert response.status_code == 200 and response.json() == {"pong": "yes"}
    assert server.scheme == "https"


def test_plain_http_and_untrusting_clients_get_nothing(server: HttpServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{server.port}/ping", timeout=10)
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"https://127.0.0.1:{server.port}/ping", verify=ssl.create_default_context(), timeout=10)
    time.sleep(0.2)
    assert _tracebacks(caplog.records) == []


def test_half_sent_headers_over_tls_are_closed_after_the_header_timeout(
    server: HttpServer, certificate: ServerCertificate
) -> None:
    trusting = ssl.create_default_context(cafile=certificate.ca_file)
    started = time.monotonic()
    with (
        socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw,
        trusting.wrap_socket(raw, server_hostname="127.0.0.1") as sock,
    ):
        sock.sendall(b"GET /ping HTTP/1.1\r\nHost: imx\r\n")
        assert sock.recv(65536) == b""  # closed without an answer (a timeout here raises after 10 s)
    assert time.monotonic() - started < HEADER_TIMEOUT_S + 3


def test_a_certificate_without_its_key_or_a_mismatched_pair_fails_at_construction(
    certificate: ServerCertificate, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="both"):
        TlsFiles.of(certificate.cert_file, None)
    assert TlsFiles.of(None, None) is None
    other = server_certificate(tmp_path)
    with pytest.raises(ssl.SSLError):
        HttpServer(FastAPI(), "127.0.0.1", 0, tls=TlsFiles(certificate.cert_file, other.key_file))


def test_each_http_service_reads_its_certificate_from_the_environment(
    certificate: ServerCertificate, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IMX_HTTP_TLS_CERT_FILE", str(certificate.cert_file))
    monkeypatch.setenv("IMX_HTTP_TLS_KEY_FILE", str(certificate.key_file))
    monkeypatch.setenv("IMX_DELIVERY_HTTP_TLS_CERT_FILE", "/run/secrets/delivery/tls.crt")
    ingest, audit, delivery = IngestSettings(), AuditSettings(), DeliverySettings()
    assert (ingest.http_tls_cert_file, ingest.http_tls_key_file) == (certificate.cert_file, certificate.key_file)
    assert (audit.http_tls_cert_file, audit.http_tls_key_file) == (certificate.cert_file, certificate.key_file)
    assert delivery.http_tls_cert_file == Path("/run/secrets/delivery/tls.crt")  # a service's own name wins
    assert delivery.dicomweb_base(8046) == "https://127.0.0.1:8046/dicomweb"  # what partners' feeds carry
