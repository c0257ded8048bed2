"""FastAPI's own request telemetry is off in imx's HTTP apps: with an exporting tracer provider, a
request whose path holds a study UID leaves no span with that UID (services/common/http_server.py
FASTAPI_TELEMETRY_OFF), where a plain FastAPI app would record it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from services.audit.api import create_app
from tests.unit.audit.fake_store import InMemoryAuditStore

CANARY_UID = "1.2.826.0.1.3680043.99.424242"


@pytest.fixture
def exported(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    """A global tracer provider that records and keeps every span, as with an OTLP endpoint."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: provider)
    yield exporter
    provider.shutdown()


def _attribute_values(exporter: InMemorySpanExporter) -> list[str]:
    return [str(value) for span in exporter.get_finished_spans() for value in (span.attributes or {}).values()]


def test_a_plain_fastapi_app_would_export_the_uid_in_its_path(exported: InMemorySpanExporter) -> None:
    app = FastAPI()

    @app.get("/studies/{uid}")
    def study(uid: str) -> dict[str, str]:
        return {}

    TestClient(app).get(f"/studies/{CANARY_UID}")
    assert any(CANARY_UID in value for value in _attribute_values(exported))


def test_the_audit_api_exports_no_span_with_the_uid_it_was_asked_about(exported: InMemorySpanExporter) -> None:
    response = TestClient(create_app(InMemoryAuditStore(), None)).get(f"/audit/studies/{CANARY_UID}")
    assert response.status_code == 404  # unknown study: answered, and nothing exported
    assert not any(CANARY_UID in value for value in _attribute_values(exported))
