"""Spans when nothing is exported: not recorded, yet each has a context of its own that carries the
trace across Kafka headers (services/common/telemetry.py)."""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from services.common.telemetry import sampler_for
from services.common.tracing_headers import extract_trace_context, inject_trace_headers

UPSTREAM_TRACE = 0x0AF7651916CD43DD8448EB211C80319C


def _tracer(otlp_endpoint: str) -> trace.Tracer:
    return TracerProvider(sampler=sampler_for(otlp_endpoint)).get_tracer("test")


def _headers(flags: str) -> dict[str, bytes]:
    return {"traceparent": f"00-{UPSTREAM_TRACE:032x}-b7ad6b7169203331-{flags}".encode()}


def test_without_an_exporter_a_consumer_span_is_not_recorded_but_continues_the_senders_trace() -> None:
    tracer = _tracer("")
    parent = extract_trace_context(_headers("00"))
    with tracer.start_as_current_span("stage process", context=parent) as span:
        recording = span.is_recording()
        outgoing = inject_trace_headers({"x-kind": b"demo"})
    context = span.get_span_context()
    assert not recording
    assert context.is_valid and context.trace_id == UPSTREAM_TRACE
    assert context.span_id != 0xB7AD6B7169203331, "a span of its own, not the sender's"
    assert outgoing["traceparent"].decode() == f"00-{UPSTREAM_TRACE:032x}-{context.span_id:016x}-00"
    assert outgoing["x-kind"] == b"demo"


def test_without_an_exporter_a_root_span_still_starts_a_trace_that_propagates() -> None:
    tracer = _tracer("")
    with tracer.start_as_current_span("ingest accept") as root:
        recording = root.is_recording()
        outgoing = inject_trace_headers({})
    assert not recording and root.get_span_context().is_valid
    child_context = extract_trace_context(outgoing)
    with tracer.start_as_current_span("routing process", context=child_context) as child:
        pass
    assert child.get_span_context().trace_id == root.get_span_context().trace_id


def test_a_trace_sampled_upstream_stays_sampled() -> None:
    with _tracer("").start_as_current_span("stage process", context=extract_trace_context(_headers("01"))) as span:
        recording = span.is_recording()
        outgoing = inject_trace_headers({})
    assert recording and span.get_span_context().trace_flags.sampled
    assert outgoing["traceparent"].endswith(b"-01")


def test_with_an_exporter_every_span_is_recorded() -> None:
    with _tracer("http://collector:4317").start_as_current_span("ingest accept") as span:
        recording = span.is_recording()
    assert recording and span.get_span_context().trace_flags.sampled
