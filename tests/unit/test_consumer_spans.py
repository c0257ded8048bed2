"""The consumer span built directly (services/common/consumer_spans.py) is the one the SDK builds: same
trace, same flags, a span id of its own, never recorded; everything it does not handle goes to the SDK.
And trace_headers writes what the W3C propagator writes."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanContext, TraceFlags, TraceState
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from services.common.consumer_spans import start_consumer_span
from services.common.telemetry import sampler_for
from services.common.tracing_headers import extract_trace_context, trace_headers

TRACE = "0af7651916cd43dd8448eb211c80319c"
SPAN = "b7ad6b7169203331"


class RefusingTracer:
    """Fails the test if the SDK's path is taken."""

    def start_span(self, *args: object, **kwargs: object) -> trace.Span:
        raise AssertionError("the SDK's tracer was asked for a span the direct path should have made")


@pytest.fixture
def recorded() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(recorded: InMemorySpanExporter) -> Iterator[TracerProvider]:
    """As in a deployment without an OTLP endpoint."""
    made = TracerProvider(sampler=sampler_for(""))
    made.add_span_processor(SimpleSpanProcessor(recorded))
    yield made
    made.shutdown()


def _sdk(provider: TracerProvider, headers: Mapping[str, bytes]) -> SpanContext:
    span = provider.get_tracer("t").start_span(
        "x", context=extract_trace_context(headers), kind=trace.SpanKind.CONSUMER
    )
    span.end()
    return span.get_span_context()


def _direct(provider: TracerProvider, headers: Mapping[str, bytes], tracer: object) -> SpanContext:
    span, context = start_consumer_span(provider, tracer, "x", headers)  # type: ignore[arg-type]
    assert trace.get_current_span(context) is span
    span.end()
    return span.get_span_context()


@pytest.mark.parametrize("flags", ["00", "02", "f0", "fe"])
def test_an_unsampled_parent_is_continued_directly_as_the_sdk_would(
    provider: TracerProvider, recorded: InMemorySpanExporter, flags: str
) -> None:
    headers = {"traceparent": f"00-{TRACE}-{SPAN}-{flags}".encode(), "imx-event-id": b"e"}
    direct, sdk = _direct(provider, headers, RefusingTracer()), _sdk(provider, headers)
    assert direct.trace_id == sdk.trace_id == int(TRACE, 16)
    assert direct.trace_flags == sdk.trace_flags
    assert direct.trace_state == sdk.trace_state
    assert direct.is_remote is sdk.is_remote is False
    assert direct.span_id not in (0, int(SPAN, 16), sdk.span_id)
    assert recorded.get_finished_spans() == ()


def test_a_record_without_a_traceparent_starts_a_new_unsampled_trace(
    provider: TracerProvider, recorded: InMemorySpanExporter
) -> None:
    direct = _direct(provider, {}, RefusingTracer())
    sdk = _sdk(provider, {})
    assert direct.is_valid and direct.trace_flags == sdk.trace_flags
    assert direct.trace_id != sdk.trace_id, "each root is a trace of its own"
    assert recorded.get_finished_spans() == ()


@pytest.mark.parametrize(
    "headers",
    [
        {"traceparent": f"00-{TRACE}-{SPAN}-01".encode()},  # sampled upstream: recorded
        {"traceparent": f"00-{TRACE}-{SPAN}-00".encode(), "tracestate": b"vendor=1"},
        {"traceparent": f"01-{TRACE}-{SPAN}-00-future".encode()},  # a later version
        {"traceparent": f" 00-{TRACE}-{SPAN}-00".encode()},
        {"traceparent": f"00-{TRACE.upper()}-{SPAN}-00".encode()},  # invalid: a new trace
        {"traceparent": f"00-{'0' * 32}-{SPAN}-00".encode()},
        {"traceparent": f"00-{TRACE}-{'0' * 16}-00".encode()},
        {"traceparent": b"garbage"},
    ],
)
def test_everything_else_is_left_to_the_sdk(
    provider: TracerProvider, recorded: InMemorySpanExporter, headers: dict[str, bytes]
) -> None:
    with pytest.raises(AssertionError, match="SDK's tracer"):
        _direct(provider, headers, RefusingTracer())
    via_sdk = _direct(provider, headers, provider.get_tracer("t"))
    sampled_upstream = headers["traceparent"].endswith(b"-01")
    assert via_sdk.trace_flags.sampled is sampled_upstream
    assert len(recorded.get_finished_spans()) == int(sampled_upstream)


def test_an_exporting_provider_is_left_to_the_sdk() -> None:
    exporter = InMemorySpanExporter()
    exporting = TracerProvider(sampler=sampler_for("http://collector:4317"))
    exporting.add_span_processor(SimpleSpanProcessor(exporter))
    for headers in ({}, {"traceparent": f"00-{TRACE}-{SPAN}-00".encode()}):
        with pytest.raises(AssertionError, match="SDK's tracer"):
            _direct(exporting, headers, RefusingTracer())
    _direct(exporting, {}, exporting.get_tracer("t"))
    assert len(exporter.get_finished_spans()) == 1, "a new trace is recorded when spans are exported"
    exporting.shutdown()


@pytest.mark.parametrize(
    "span_context",
    [
        SpanContext(int(TRACE, 16), int(SPAN, 16), False, TraceFlags(0)),
        SpanContext(1, 2, False, TraceFlags(0x03)),
        SpanContext(2**128 - 1, 2**64 - 1, True, TraceFlags(0xFF)),
        SpanContext(int(TRACE, 16), int(SPAN, 16), False, TraceFlags(1), TraceState([("a", "b")])),
        trace.INVALID_SPAN_CONTEXT,
        SpanContext(int(TRACE, 16), 0, False, TraceFlags(0)),
    ],
)
def test_trace_headers_are_what_the_w3c_propagator_writes(span_context: SpanContext) -> None:
    context = trace.set_span_in_context(trace.NonRecordingSpan(span_context))
    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier, context)
    assert trace_headers(context) == {k: v.encode() for k, v in carrier.items()}
