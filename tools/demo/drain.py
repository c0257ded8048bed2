"""Knowing when the pipeline has finished: every consumer reports no lag and the audit trails of the
sent studies stop changing. Used by the demo.

The counts come from each study's trail (`GET /audit/studies/{uid}`, an indexed lookup), not from the
global summary: on a long-lived local database the summary's aggregations scan every record.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

import grpc
import httpx

from services.cli.settings import CliSettings
from services.proto_gen.imx.v1 import control_pb2, control_pb2_grpc


@dataclass
class TrailCounts:
    ingested: int = 0
    delivered_by_partner: Counter[str] = field(default_factory=Counter)
    failed_by_partner: Counter[str] = field(default_factory=Counter)
    quarantined_by_reason: Counter[str] = field(default_factory=Counter)
    dead_letters: int = 0

    @property
    def terminal(self) -> int:
        """Delivery outcomes plus quarantines: one per (instance, destination) or per refused instance."""
        return (
            sum(self.delivered_by_partner.values())
            + sum(self.failed_by_partner.values())
            + sum(self.quarantined_by_reason.values())
        )


def total_lag(cli: CliSettings) -> int:
    lag = 0
    for address in (cli.routing_grpc, cli.deid_grpc, cli.delivery_grpc, cli.audit_grpc):
        with grpc.insecure_channel(address) as channel:
            status = control_pb2_grpc.ControlStub(channel).Status(control_pb2.StatusRequest(), timeout=5)
            lag += sum(item.lag for item in status.lag)
    return lag


def trail_counts(cli: CliSettings, study_uids: Iterable[str]) -> TrailCounts:
    counts = TrailCounts()
    with httpx.Client(base_url=cli.audit_url, timeout=60) as client:
        for uid in study_uids:
            response = client.get(f"/audit/studies/{uid}")
            if response.status_code == 404:
                continue  # nothing recorded yet
            response.raise_for_status()
            trail = response.json()
            counts.ingested += sum(r["instances"] for r in trail["received"])
            for d in trail["destinations"]:
                counts.delivered_by_partner[d["partner_id"]] += d["delivered"]
                if d["failed"]:
                    counts.failed_by_partner[d["partner_id"]] += d["failed"]
            for q in trail["quarantined"]:
                counts.quarantined_by_reason[f"{q['stage']}: {q['reason']}"] += q["count"]
            counts.dead_letters += sum(d["count"] for d in trail["dead_letters"])
    return counts


def wait_until_drained(
    cli: CliSettings, study_uids: list[str], terminal_expected: int, timeout_s: float = 180.0
) -> TrailCounts:
    """Until the trails show `terminal_expected` terminal events and nothing moves any more, or the
    timeout; returns the last counts."""
    deadline = time.monotonic() + timeout_s
    previous: TrailCounts | None = None
    stable = 0
    counts = TrailCounts()
    while time.monotonic() < deadline:
        counts = trail_counts(cli, study_uids)
        if counts == previous and counts.terminal >= terminal_expected and total_lag(cli) == 0:
            stable += 1
            if stable >= 2:
                return counts
        else:
            stable = 0
        previous = counts
        time.sleep(1.0)
    return counts
