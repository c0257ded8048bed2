"""Audit asks the broker for up to a second of events per fetch and handles up to 2,000 events per batch;
run_stage hands a spec's fetch limits to the stage's consumer, and a spec that names none keeps the pipeline
stages' 100 ms."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

import pytest

from services.audit.consumer import audit_stage_spec
from services.audit.settings import AuditSettings
from services.common import runtime
from services.common.bus import FETCH_MAX_WAIT_MS, FETCH_MIN_BYTES
from services.common.control_auth import ControlAuth
from services.common.settings import ServiceSettings
from services.common.topics import Topics


class _Built(Exception):
    pass


class _NoControlServer:
    """The control server run_stage starts before anything else, not started here."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass


def _consumer_arguments(monkeypatch: pytest.MonkeyPatch, spec: runtime.StageSpec) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    def consumer(**kwargs: Any) -> None:
        seen.update(kwargs)
        raise _Built

    monkeypatch.setattr(runtime, "ControlServer", _NoControlServer)
    monkeypatch.setattr(runtime, "ensure_pipeline_topics", lambda *args, **kwargs: None)
    monkeypatch.setattr(runtime, "BusProducer", lambda *args, **kwargs: None)
    monkeypatch.setattr(runtime, "StageConsumer", consumer)
    monkeypatch.setattr(runtime, "setup_telemetry", lambda *args: SimpleNamespace(shutdown=lambda: None))
    monkeypatch.setattr(runtime, "configure_logging", lambda *args: None)
    monkeypatch.setattr(runtime, "install_stop_signals", lambda stop: None)
    with pytest.raises(_Built):
        runtime.run_stage(ServiceSettings(), spec, lambda _p, _t: lambda m: [], cast(ControlAuth, None))
    return seen


def test_audit_waits_up_to_a_second_for_a_megabyte(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = _consumer_arguments(monkeypatch, audit_stage_spec(Topics("t-f.")))
    assert (seen["fetch_max_wait_ms"], seen["fetch_min_bytes"]) == (1000, 1024 * 1024)


def test_a_spec_without_limits_keeps_the_stage_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = _consumer_arguments(monkeypatch, runtime.StageSpec(name="routing", group_id="g", topics=["t"]))
    assert (seen["fetch_max_wait_ms"], seen["fetch_min_bytes"]) == (FETCH_MAX_WAIT_MS, FETCH_MIN_BYTES) == (100, 65536)


def test_audit_handles_up_to_two_thousand_events_per_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("IMX_MAX_BATCH", "IMX_AUDIT_MAX_BATCH"):
        monkeypatch.delenv(name, raising=False)
    assert (AuditSettings().max_batch, ServiceSettings().max_batch) == (2000, 200)
    monkeypatch.setenv("IMX_MAX_BATCH", "300")
    assert AuditSettings().max_batch == 300
    monkeypatch.setenv("IMX_AUDIT_MAX_BATCH", "400")
    assert AuditSettings().max_batch == 400
