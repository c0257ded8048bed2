"""The span a stage handles one consumed record under (services/common/bus.py, run_handler_over_batch).

Without an OTLP endpoint the provider's sampler is telemetry.UNEXPORTED: a span is recorded only when
its trace was sampled upstream, and every other span is a context alone (a trace id, a new span id,
the flags), so one trace still follows an instance across every hop. The SDK made that context in
~16 µs per record on the 2-core machine (`timeit`, with the outputs' headers; README, Figures,
2026-12-05): decode the traceparent, match it with a str regex, wrap it in a context, ask the sampler,
build the span, then format it again for the outputs; audit alone handles six records per instance.
Here the same context is built directly from the header's bytes in ~3 µs, with the SDK's own id
generator and its rule for the random-trace-id flag (W3C Trace Context level 2).

Anything else takes the SDK's path unchanged: a parent sampled upstream (its span is recorded), a
`tracestate`, any traceparent not in the canonical version-00 form (the SDK decides whether it is
valid), a provider that exports (every span recorded), and any propagator other than W3C's direct one
(`OTEL_PROPAGATORS`). tests/unit/test_consumer_spans.py holds the two paths to the same contexts.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import NonRecordingSpan, Span, SpanContext, TraceFlags

from services.common.telemetry import UNEXPORTED
from services.common.tracing_headers import direct_trace_context, extract_trace_context

# Version 00 exactly as W3C Trace Context writes it (lower-case hex, nothing after the flags).
_CANONICAL = re.compile(rb"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})\Z")
_ZERO_TRACE, _ZERO_SPAN = b"0" * 32, b"0" * 16
_EMPTY = Context()


def start_consumer_span(
    provider: trace.TracerProvider, tracer: trace.Tracer, name: str, headers: Mapping[str, bytes]
) -> tuple[Span, Context]:
    """A CONSUMER span for a record with these headers, and a context holding it (to attach, and to
    inject into the record's outputs). Ended by the caller, as the SDK's spans are."""
    span = _unrecorded_span(provider, headers)
    if span is not None:
        return span, trace.set_span_in_context(span, _EMPTY)
    parent = extract_trace_context(headers)
    span = tracer.start_span(name, context=parent, kind=trace.SpanKind.CONSUMER)
    return span, trace.set_span_in_context(span, parent)


def _unrecorded_span(provider: trace.TracerProvider, headers: Mapping[str, bytes]) -> Span | None:
    """The span the SDK would make, when it is certain not to be recorded; None to ask the SDK."""
    if getattr(provider, "sampler", None) is not UNEXPORTED or not direct_trace_context():
        return None
    ids = provider.id_generator  # type: ignore[attr-defined]  # the SDK's TracerProvider (sampler checked)
    value = headers.get("traceparent")
    if value is None:
        # A root span: a new trace, not sampled (ALWAYS_OFF), flagged random as the SDK flags it.
        flags = TraceFlags.RANDOM_TRACE_ID if ids.is_trace_id_random() else TraceFlags.DEFAULT
        return NonRecordingSpan(SpanContext(ids.generate_trace_id(), ids.generate_span_id(), False, TraceFlags(flags)))
    match = _CANONICAL.match(value)
    if match is None or "tracestate" in headers:
        return None
    trace_hex, span_hex, flags_hex = match.groups()
    parent_flags = int(flags_hex, 16)
    if parent_flags & TraceFlags.SAMPLED or trace_hex == _ZERO_TRACE or span_hex == _ZERO_SPAN:
        return None
    # The parent's trace, a span id of its own; not sampled, random-trace-id as the parent says.
    flags = TraceFlags(parent_flags & TraceFlags.RANDOM_TRACE_ID)
    return NonRecordingSpan(SpanContext(int(trace_hex, 16), ids.generate_span_id(), False, flags))
