"""Knowing when the pipeline has finished, then counting what happened from the audit trails.

Done means: every consumer reports no lag and the number of events each stage has handled stopped
moving (gRPC Control.Status, cheap), and only then are the sent studies' trails read
(`GET /audit/studies/{uid}`). FerretDB 1.x answers every non-_id query by reading the whole
collection, so trails are read once, not polled.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx

from services.cli.settings import CliSettings
from services.common.control_channel import control_channel
from services.proto_gen.imx.v1 import control_pb2, control_pb2_grpc


@dataclass
class TrailCounts:
    ingested: int = 0
    delivered_by_partner: Counter[str] = field(default_factory=Counter)
    failed_by_partner: Counter[str] = field(default_factory=Counter)
    quarantined_by_reason: Counter[str] = field(default_factory=Counter)
    dead_letters: int = 0
    last_delivered_at: datetime | None = None

    @property
    def terminal(self) -> int:
        """Delivery outcomes plus quarantines: one per (instance, destination) or per refused instance."""
        return (
            sum(self.delivered_by_partner.values())
            + sum(self.failed_by_partner.values())
            + sum(self.quarantined_by_reason.values())
        )


def study_trails(cli: CliSettings, study_uids: Iterable[str]) -> Iterator[dict[str, Any]]:
    """Each study's trail (`GET /audit/studies/{uid}`, with `cli.audit_api_key`); none for a study audit has
    recorded nothing of yet."""
    headers = {"Authorization": f"Bearer {cli.audit_api_key}"} if cli.audit_api_key else {}
    with httpx.Client(base_url=cli.audit_url, timeout=60, headers=headers) as client:
        for uid in study_uids:
            response = client.get(f"/audit/studies/{uid}")
            if response.status_code == 404:
                continue
            response.raise_for_status()
            yield response.json()


def trail_counts(cli: CliSettings, study_uids: Iterable[str]) -> TrailCounts:
    counts = TrailCounts()
    for trail in study_trails(cli, study_uids):
        counts.ingested += sum(r["instances"] for r in trail["received"])
        for d in trail["destinations"]:
            counts.delivered_by_partner[d["partner_id"]] += d["delivered"]
            if d["last_delivered_at"]:
                at = datetime.fromisoformat(d["last_delivered_at"])
                counts.last_delivered_at = max(filter(None, (counts.last_delivered_at, at)))
            if d["failed"]:
                counts.failed_by_partner[d["partner_id"]] += d["failed"]
        for q in trail["quarantined"]:
            counts.quarantined_by_reason[f"{q['stage']}: {q['reason']}"] += q["count"]
        counts.dead_letters += sum(d["count"] for d in trail["dead_letters"])
    return counts


def progress_snapshot(cli: CliSettings) -> tuple[int, tuple[int, ...]]:
    """(total lag, events handled per consumer)."""
    lag = 0
    processed: list[int] = []
    for address in (cli.routing_grpc, cli.deid_grpc, cli.delivery_grpc, cli.audit_grpc):
        with control_channel(address) as channel:
            status = control_pb2_grpc.ControlStub(channel).Status(control_pb2.StatusRequest(), timeout=5)
        lag += sum(item.lag for item in status.lag)
        processed.append(status.processed + status.failed)
    return lag, tuple(processed)


def wait_quiet(cli: CliSettings, deadline: float) -> bool:
    """Until no consumer lags and none has handled anything for three looks a second apart (each
    refreshes its lag every 2 s), or the monotonic `deadline`; True when quiet."""
    previous: tuple[int, tuple[int, ...]] | None = None
    quiet = 0
    while quiet < 3:
        if time.monotonic() >= deadline:
            return False
        snapshot = progress_snapshot(cli)
        quiet = quiet + 1 if snapshot[0] == 0 and snapshot == previous else 0
        previous = snapshot
        time.sleep(1.0)
    return True


def wait_until_drained(
    cli: CliSettings, study_uids: list[str], terminal_expected: int, timeout_s: float = 180.0
) -> TrailCounts:
    """Until the consumers are idle and the trails show `terminal_expected` terminal events, or the
    timeout; returns the last counts."""
    deadline = time.monotonic() + timeout_s
    counts = TrailCounts()
    while time.monotonic() < deadline:
        wait_quiet(cli, deadline)
        counts = trail_counts(cli, study_uids)
        if counts.terminal >= terminal_expected:
            return counts
    return counts
