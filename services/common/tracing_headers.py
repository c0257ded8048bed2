"""W3C trace context carried in Kafka headers, so one trace follows an instance across every hop.

By default only `traceparent` and `tracestate` travel (no baggage), so the W3C Trace Context propagator
is used directly, one instance for the process, rather than the global composite one (which also runs
the baggage propagator on every call). Every consumed record pays for this: the headers are read in
place through a getter instead of being copied into a str dict first.

`OTEL_PROPAGATORS` is honoured as the OpenTelemetry SDKs read it: unset, `tracecontext` or
`tracecontext,baggage` keep the direct path above (baggage is not carried over Kafka); `none` carries
nothing; any other list (e.g. `b3`, with its package installed) is loaded from the installed
propagators, and a name that is not installed stops the service at start with a clear error.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.propagators.textmap import Getter, TextMapPropagator
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util._importlib_metadata import entry_points

# Names that keep the direct W3C path (the SDKs' default is "tracecontext,baggage").
_DIRECT = ({"tracecontext"}, {"tracecontext", "baggage"})


def propagator_for(configured: str | None) -> TextMapPropagator:
    """The propagator an `OTEL_PROPAGATORS` value asks for (see the module's docstring)."""
    names = [name.strip().lower() for name in (configured or "").split(",") if name.strip()]
    if not names or set(names) in _DIRECT:
        return TraceContextTextMapPropagator()
    if "none" in names:
        return CompositePropagator([])
    loaded: list[TextMapPropagator] = []
    for name in names:
        found = list(entry_points(group="opentelemetry_propagator", name=name))
        if not found:
            raise ValueError(f"OTEL_PROPAGATORS names {name!r}, which is not installed (or misspelled)")
        loaded.append(found[0].load()())
    return CompositePropagator(loaded)


class _HeaderGetter(Getter[Mapping[str, bytes]]):
    """Reads Kafka headers (str → bytes) as the propagator's carrier."""

    def get(self, carrier: Mapping[str, bytes], key: str) -> list[str] | None:
        value = carrier.get(key)
        return None if value is None else [value.decode("latin-1")]

    def keys(self, carrier: Mapping[str, bytes]) -> list[str]:
        return list(carrier)


_PROPAGATOR = propagator_for(os.environ.get("OTEL_PROPAGATORS"))
_GETTER = _HeaderGetter()
_DIRECT_PATH = isinstance(_PROPAGATOR, TraceContextTextMapPropagator)
# The headers the propagator writes: replaced, never doubled, when a record is re-published.
TRACE_HEADERS = tuple(sorted(_PROPAGATOR.fields))


def direct_trace_context() -> bool:
    """True when only W3C's traceparent/tracestate travel (see the module's docstring)."""
    return _DIRECT_PATH


def trace_headers(context: otel_context.Context | None = None) -> dict[str, bytes]:
    """The headers carrying `context`'s span (default: the current one); empty without a valid span."""
    if _DIRECT_PATH:
        span_context = trace.get_current_span(context).get_span_context()
        if not span_context.trace_state:
            # What the W3C propagator writes for it (a traceparent alone), without its str round trip.
            if span_context == trace.INVALID_SPAN_CONTEXT:
                return {}
            return {
                "traceparent": b"00-%032x-%016x-%02x"
                % (span_context.trace_id, span_context.span_id, span_context.trace_flags)
            }
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context)
    return {k: v.encode() for k, v in carrier.items()}


def with_trace_headers(headers: Mapping[str, bytes], trace: Mapping[str, bytes]) -> dict[str, bytes]:
    """`headers` with their trace context replaced by `trace` (from `trace_headers`)."""
    if "traceparent" in headers or "tracestate" in headers:
        headers = {k: v for k, v in headers.items() if k not in TRACE_HEADERS}
    return {**headers, **trace}


def inject_trace_headers(headers: Mapping[str, bytes]) -> dict[str, bytes]:
    """The given headers plus the current span's context (an existing traceparent is replaced)."""
    return with_trace_headers(headers, trace_headers())


def extract_trace_context(headers: Mapping[str, bytes]) -> otel_context.Context:
    """The context of the span that sent these headers (an empty context when they carry none)."""
    return _PROPAGATOR.extract(headers, getter=_GETTER)
