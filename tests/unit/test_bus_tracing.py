"""The consumer loop's spans: one trace follows a record into every output, whether or not spans are
recorded (services/common/bus.py run_handler_over_batch, services/common/telemetry.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from services.common.bus import run_handler_over_batch
from services.common.messages import IncomingMessage, OutgoingMessage
from services.common.telemetry import sampler_for

UPSTREAM_TRACE = 0x0AF7651916CD43DD8448EB211C80319C
UPSTREAM_SPAN = 0xB7AD6B7169203331


def _provider(monkeypatch: pytest.MonkeyPatch, otlp_endpoint: str) -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=sampler_for(otlp_endpoint))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: provider)
    yield exporter
    provider.shutdown()


@pytest.fixture
def unexported(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    """As in a deployment without an OTLP endpoint: spans recorded only when sampled upstream."""
    yield from _provider(monkeypatch, "")


@pytest.fixture
def exported(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    """As with an OTLP endpoint: every span recorded."""
    yield from _provider(monkeypatch, "http://collector:4317")


def _record(offset: int, flags: str | None, value: bytes = b"v") -> IncomingMessage:
    headers = {"x-origin": b"test"}
    if flags is not None:
        headers["traceparent"] = f"00-{UPSTREAM_TRACE:032x}-{UPSTREAM_SPAN:016x}-{flags}".encode()
    return IncomingMessage("in", 0, offset, b"k", value, headers)


def _parse(traceparent: bytes) -> tuple[int, int, str]:
    version, trace_id, span_id, flags = traceparent.decode().split("-")
    assert version == "00"
    return int(trace_id, 16), int(span_id, 16), flags


def test_every_output_continues_the_inputs_trace_under_a_span_of_its_own(
    unexported: InMemorySpanExporter,
) -> None:
    seen: list[trace.SpanContext] = []

    def handler(message: IncomingMessage) -> list[OutgoingMessage]:
        seen.append(trace.get_current_span().get_span_context())
        stale = {"traceparent": b"00-" + b"1" * 32 + b"-" + b"2" * 16 + b"-01", "tracestate": b"a=b", "x-n": b"1"}
        return [OutgoingMessage("out", b"1", b"k", stale), OutgoingMessage("out", b"2", b"k")]

    result = run_handler_over_batch([_record(7, "00")], handler, "dlq", "test")
    [current] = seen
    assert current.trace_id == UPSTREAM_TRACE and current.span_id != UPSTREAM_SPAN
    for output in result.outputs:
        assert _parse(output.headers["traceparent"]) == (UPSTREAM_TRACE, current.span_id, "00")
        assert "tracestate" not in output.headers, "the stale context is replaced, not merged"
    assert result.outputs[0].headers["x-n"] == b"1"
    assert unexported.get_finished_spans() == (), "not sampled upstream: nothing recorded"


def test_a_record_without_a_traceparent_starts_a_new_trace(unexported: InMemorySpanExporter) -> None:
    result = run_handler_over_batch(
        [_record(1, None), _record(2, None)], lambda m: [OutgoingMessage("out", m.value)], "dlq", "test"
    )
    first, second = (_parse(o.headers["traceparent"]) for o in result.outputs)
    assert first[0] not in (0, UPSTREAM_TRACE) and second[0] not in (0, first[0])


def test_a_trace_sampled_upstream_is_recorded_and_stays_sampled(unexported: InMemorySpanExporter) -> None:
    result = run_handler_over_batch([_record(7, "01")], lambda m: [OutgoingMessage("out", m.value)], "dlq", "test")
    [span] = unexported.get_finished_spans()
    assert span.name == "test process" and span.kind == trace.SpanKind.CONSUMER
    assert span.parent is not None and span.parent.span_id == UPSTREAM_SPAN
    assert dict(span.attributes or {}) == {"messaging.destination.name": "in", "messaging.kafka.offset": 7}
    [output] = result.outputs
    assert _parse(output.headers["traceparent"]) == (UPSTREAM_TRACE, span.context.span_id, "01"), "sampled"


def test_a_poison_record_sets_the_span_status_and_its_dead_letter_stays_in_the_trace(
    exported: InMemorySpanExporter,
) -> None:
    def handler(message: IncomingMessage) -> list[OutgoingMessage]:
        raise ValueError("cannot parse")

    result = run_handler_over_batch([_record(3, None)], handler, "dlq", "test")
    [span] = exported.get_finished_spans()
    assert span.status.status_code == trace.StatusCode.ERROR and span.status.description == "ValueError"
    [dead_letter] = result.outputs
    assert dead_letter.topic == "dlq"
    assert _parse(dead_letter.headers["traceparent"])[:2] == (span.context.trace_id, span.context.span_id)
    assert int(_parse(dead_letter.headers["traceparent"])[2], 16) & 1, "sampled"


def test_a_poison_record_without_recording_still_goes_to_dead_letter_in_the_trace(
    unexported: InMemorySpanExporter,
) -> None:
    def handler(message: IncomingMessage) -> list[OutgoingMessage]:
        raise ValueError("cannot parse")

    result = run_handler_over_batch([_record(3, "00")], handler, "dlq", "test")
    [dead_letter] = result.outputs
    assert _parse(dead_letter.headers["traceparent"])[0] == UPSTREAM_TRACE and result.failed == 1
