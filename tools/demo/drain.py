"""Knowing when the pipeline has finished: every consumer reports no lag and the audit trail stops
changing. Used by the demo and the benchmark."""

from __future__ import annotations

import time
from datetime import datetime

import grpc
import httpx

from services.cli.settings import CliSettings
from services.proto_gen.imx.v1 import control_pb2, control_pb2_grpc


def total_lag(cli: CliSettings) -> int:
    lag = 0
    for address in (cli.routing_grpc, cli.deid_grpc, cli.delivery_grpc, cli.audit_grpc):
        with grpc.insecure_channel(address) as channel:
            status = control_pb2_grpc.ControlStub(channel).Status(control_pb2.StatusRequest(), timeout=5)
            lag += sum(item.lag for item in status.lag)
    return lag


def audit_summary(cli: CliSettings, since: datetime) -> dict[str, dict[str, int]]:
    response = httpx.get(f"{cli.audit_url}/audit/summary", params={"since": since.isoformat()}, timeout=30)
    response.raise_for_status()
    summary: dict[str, dict[str, int]] = response.json()
    return summary


def wait_until_drained(
    cli: CliSettings, since: datetime, terminal_expected: int, timeout_s: float = 180.0
) -> dict[str, dict[str, int]]:
    """Until audit shows `terminal_expected` terminal events (delivery outcomes plus quarantines) and
    nothing moves any more, or the timeout; returns the last summary."""
    deadline = time.monotonic() + timeout_s
    previous: dict[str, dict[str, int]] | None = None
    stable = 0
    summary: dict[str, dict[str, int]] = {}
    while time.monotonic() < deadline:
        summary = audit_summary(cli, since)
        terminal = terminal_count(summary)
        if summary == previous and total_lag(cli) == 0 and terminal >= terminal_expected:
            stable += 1
            if stable >= 2:
                return summary
        else:
            stable = 0
        previous = summary
        time.sleep(1.0)
    return summary


def terminal_count(summary: dict[str, dict[str, int]]) -> int:
    return (
        sum(summary.get("delivered_by_partner", {}).values())
        + sum(summary.get("failed_by_partner", {}).values())
        + sum(summary.get("quarantined_by_reason", {}).values())
    )
