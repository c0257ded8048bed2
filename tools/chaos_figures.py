"""The figures `make chaos` prints as its last line, and whether they meet the issue's targets (pure)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tools.chaos_ledger import FuzzFigures, Reconciled

RSS_LIMIT_MB = 1024.0
HANG_S = 5.0


@dataclass
class FaultResult:
    """One injected fault: what was done and how long until the pipeline had caught up afterwards."""

    name: str
    recovery_s: float | None  # None: it did not catch up within the run's limit
    detail: str = ""


@dataclass
class ChaosRun:
    reconciled: Reconciled
    fuzz: FuzzFigures | None
    faults: list[FaultResult]
    crashes: dict[str, int]  # process -> restarts nobody asked for
    peak_rss_mb: dict[str, float]  # process -> highest resident set size seen (VmHWM)
    extra: dict[str, Any] = field(default_factory=dict)


def recovery_max(faults: list[FaultResult], limit_s: float) -> float:
    """The longest recovery; a fault the pipeline never caught up from counts as the run's limit."""
    return round(max((limit_s if f.recovery_s is None else f.recovery_s for f in faults), default=0.0), 1)


def misses(figures: Mapping[str, Any]) -> list[str]:
    """Targets the figures miss (issue 9 item 7), as short sentences; empty when all are met."""
    missed = [
        f"{key} {figures[key]} (target 0)"
        for key in ("lost", "duplicated", "crashes", "hangs", "unaccounted")
        if figures[key]
    ]
    gaps = figures.get("audit_gaps") or {}
    if any(gaps.values()):
        missed.append(f"audit_gaps {sum(gaps.values())} (target 0: events missing from the audit trail, {gaps})")
    if figures["max_rss_mb"] >= RSS_LIMIT_MB:
        missed.append(f"max_rss_mb {figures['max_rss_mb']} (target < {RSS_LIMIT_MB:.0f})")
    return missed


def result_line(run: ChaosRun, limit_s: float) -> dict[str, Any]:
    fuzz = run.fuzz
    figures: dict[str, Any] = {
        "lost": run.reconciled.lost,
        "duplicated": run.reconciled.duplicated,
        "crashes": sum(run.crashes.values()),
        "hangs": fuzz.hangs if fuzz else 0,
        "unaccounted": fuzz.unaccounted if fuzz else 0,
        "max_rss_mb": round(max(run.peak_rss_mb.values(), default=0.0), 1),
        "recovery_s_max": recovery_max(run.faults, limit_s),
    }
    figures["recovery_s"] = {f.name: (None if f.recovery_s is None else round(f.recovery_s, 1)) for f in run.faults}
    figures["ledger"] = {
        "acknowledged": run.reconciled.acknowledged,
        "arrived": run.reconciled.arrived,
        "quarantined": run.reconciled.quarantined,
        "redelivered": run.reconciled.redelivered,
        "foreign": run.reconciled.foreign,
    }
    if fuzz:
        figures["fuzz"] = {
            "inputs": fuzz.inputs,
            "accepted": fuzz.accepted,
            "rejected": fuzz.rejected,
            "refused": fuzz.refused,
            "errors": fuzz.errors,
            "5xx": fuzz.fivexx,
            "slowest_s": fuzz.slowest_s,
            "by_kind": fuzz.by_kind,
        }
    figures["crashes_by_process"] = {name: n for name, n in sorted(run.crashes.items()) if n}
    figures["rss_mb"] = {name: round(mb, 1) for name, mb in sorted(run.peak_rss_mb.items())}
    figures.update(run.extra)
    figures["missed"] = misses(figures)
    return figures
