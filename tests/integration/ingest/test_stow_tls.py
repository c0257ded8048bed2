"""STOW-RS over HTTPS when the service is given a certificate (IMX_HTTP_TLS_CERT_FILE/KEY_FILE): the
running service stores an upload from a client that trusts the certificate and serves no plain HTTP."""

from __future__ import annotations

import ssl
from collections.abc import Iterator

import httpx
import pytest

from services.ingest.settings import IngestSettings
from tests.integration.ingest.conftest import SenderOrg
from tests.integration.ingest.helpers import RunningIngest, make_settings, running_ingest
from tests.tls_certs import ServerCertificate, server_certificate
from tests.unit.ingest.samples import mr_study, multipart_body, stow_content_type


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> ServerCertificate:
    return server_certificate(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def ingest_settings(
    kafka_bootstrap: str, mongo_uri: str, tmp_path_factory: pytest.TempPathFactory, certificate: ServerCertificate
) -> IngestSettings:
    settings = make_settings(kafka_bootstrap, mongo_uri, tmp_path_factory)
    return settings.model_copy(
        update={"http_tls_cert_file": certificate.cert_file, "http_tls_key_file": certificate.key_file}
    )


@pytest.fixture(scope="module")
def ingest(ingest_settings: IngestSettings, sender: SenderOrg) -> Iterator[RunningIngest]:
    with running_ingest(ingest_settings) as running:
        yield running


def test_stow_rs_over_https_with_a_trusted_certificate(
    ingest: RunningIngest, sender: SenderOrg, certificate: ServerCertificate
) -> None:
    https_url = ingest.stow_url.replace("http://", "https://")
    headers = {"Content-Type": stow_content_type(), "Authorization": f"Bearer {sender.api_key}"}
    body = multipart_body(mr_study(301, n=2))
    trusting = ssl.create_default_context(cafile=certificate.ca_file)

    response = httpx.post(https_url, content=body, headers=headers, verify=trusting, timeout=60)

    assert response.status_code == 200
    assert len(response.json()["00081199"]["Value"]) == 2
    with pytest.raises(httpx.TransportError):
        httpx.post(ingest.stow_url, content=body, headers=headers, timeout=10)
