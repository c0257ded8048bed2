"""OTEL_PROPAGATORS is honoured for the trace context carried in Kafka headers."""

import pytest
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from services.common.tracing_headers import propagator_for


@pytest.mark.parametrize("configured", [None, "", "tracecontext", "tracecontext,baggage", " TraceContext , baggage "])
def test_the_default_and_its_spellings_keep_the_direct_w3c_path(configured: str | None) -> None:
    propagator = propagator_for(configured)
    assert isinstance(propagator, TraceContextTextMapPropagator)
    assert propagator.fields == {"traceparent", "tracestate"}


def test_none_carries_nothing() -> None:
    propagator = propagator_for("none")
    carrier: dict[str, str] = {}
    propagator.inject(carrier)
    assert propagator.fields == set() and carrier == {}


def test_other_names_are_loaded_from_the_installed_propagators() -> None:
    propagator = propagator_for("baggage")
    assert isinstance(propagator, CompositePropagator)
    assert propagator.fields == W3CBaggagePropagator().fields


def test_a_name_not_installed_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="'b3-not-here'"):
        propagator_for("tracecontext,b3-not-here")
