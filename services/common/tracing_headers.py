"""W3C trace context carried in Kafka headers, so one trace follows an instance across every hop."""

from __future__ import annotations

from collections.abc import Mapping

from opentelemetry import context as otel_context
from opentelemetry import propagate

TRACE_HEADERS = ("traceparent", "tracestate")


def inject_trace_headers(headers: Mapping[str, bytes]) -> dict[str, bytes]:
    """The given headers plus the current span's context (an existing traceparent is replaced)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    merged = {k: v for k, v in headers.items() if k not in TRACE_HEADERS}
    merged.update({k: v.encode() for k, v in carrier.items()})
    return merged


def extract_trace_context(headers: Mapping[str, bytes]) -> otel_context.Context:
    carrier = {k: v.decode("latin-1") for k, v in headers.items() if k in TRACE_HEADERS}
    return propagate.extract(carrier)
