"""Issue 10's targets, checked against what `make bench` measured: the lines it prints before its JSON
line, and the verdict of a back-to-back series (`make bench-series`). Pure: figures in, text out.

A target no run measured (Orthanc skipped, no receipts) is reported as such, never as met."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

RATE_VS_ORTHANC = 3.0  # end to end, at least three times Orthanc's best rate in the same run
CPU_VS_ORTHANC = 0.5  # CPU per instance over every process, at most half of Orthanc's lowest
P99_MS = 2000.0  # accepted → stored at the partner, under two seconds at that rate
LAST_VS_FIRST = 0.9  # runs back to back without cleaning: the last at least 90% of the first


@dataclass(frozen=True)
class Verdict:
    target: str  # the key in the JSON line's "targets_met"
    met: bool | None  # None: this run did not measure it
    line: str


def _number(result: Mapping[str, object], key: str) -> float | None:
    value = result.get(key)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _met(met: bool) -> str:
    return "met" if met else "not met"


def _shown(value: float, target: float, met: bool, ceiling: bool) -> float:
    """`value` to two decimals, rounded as usual, except that a missed target never rounds onto it: a rate
    2.996 times Orthanc's shows as 2.99, not as a 3.00 that missed (the JSON keeps the usual rounding)."""
    shown = round(value, 2)
    if not met and (shown <= target if ceiling else shown >= target):
        shown = (math.ceil if ceiling else math.floor)(value * 100) / 100
    return shown


def _compare(ours: float, theirs: float, bound: float, ceiling: bool) -> tuple[bool, float, float]:
    """`ours` over `theirs` against `bound` (at most it when `ceiling`, else at least): (met, the ratio as
    shown, the figure of ours the bound asks for)."""
    ratio = ours / theirs
    met = ratio <= bound if ceiling else ratio >= bound
    return met, _shown(ratio, bound, met, ceiling), bound * theirs


def rate_verdict(result: Mapping[str, object]) -> Verdict:
    per_s, orthanc = _number(result, "instances_per_s"), _number(result, "orthanc_exchange_per_s")
    if per_s is None or not orthanc:
        return Verdict("rate_vs_orthanc", None, f"rate: {per_s}/s; no Orthanc figure to compare it with")
    met, shown, needed = _compare(per_s, orthanc, RATE_VS_ORTHANC, ceiling=False)
    short = 1 - per_s / needed
    share = f"{short:.0%}" if short >= 0.01 else f"{short:.1%}"  # never "0% short" for a miss
    gap = "" if met else f"; {needed:.1f}/s needed, {share} short"
    return Verdict(
        "rate_vs_orthanc",
        met,
        f"rate: {per_s}/s against Orthanc's {orthanc}/s, {shown:.2f}x "
        f"(target ≥ {RATE_VS_ORTHANC:g}x: {_met(met)}{gap})",
    )


def cpu_verdict(result: Mapping[str, object]) -> Verdict:
    cpu, orthanc = _number(result, "cpu_ms_per_instance"), _number(result, "orthanc_cpu_ms_per_instance")
    if cpu is None or not orthanc:
        return Verdict("cpu_vs_orthanc", None, f"CPU: {cpu} ms per instance; no Orthanc figure to compare it with")
    met, shown, allowed = _compare(cpu, orthanc, CPU_VS_ORTHANC, ceiling=True)
    gap = "" if met else f"; {allowed:.2f} ms allowed, {cpu - allowed:.2f} ms over"
    return Verdict(
        "cpu_vs_orthanc",
        met,
        f"CPU: {cpu} ms per instance against Orthanc's {orthanc} ms, {shown:.2f} of it "
        f"(target ≤ {CPU_VS_ORTHANC:g}: {_met(met)}{gap})",
    )


def p99_verdict(result: Mapping[str, object]) -> Verdict:
    p99 = _number(result, "p99_ms")
    if p99 is None:
        return Verdict("p99", None, "p99 accepted → stored: no receipts to measure it")
    met = p99 < P99_MS
    return Verdict("p99", met, f"p99 accepted → stored: {p99 / 1000:.2f} s (target < {P99_MS / 1000:g} s: {_met(met)})")


def run_verdicts(result: Mapping[str, object]) -> list[Verdict]:
    """One run's figures against the targets a single run can show (the series is `series_verdict`)."""
    return [rate_verdict(result), cpu_verdict(result), p99_verdict(result)]


def targets_met(verdicts: Sequence[Verdict]) -> dict[str, bool | None]:
    return {v.target: v.met for v in verdicts}


def series_verdict(rates: Sequence[float]) -> Verdict:
    """Runs back to back without cleaning: the last one's rate against the first's."""
    if len(rates) < 2 or rates[0] <= 0:
        return Verdict("last_vs_first", None, "back to back: fewer than two runs with a rate")
    met, shown, _ = _compare(rates[-1], rates[0], LAST_VS_FIRST, ceiling=False)
    return Verdict(
        "last_vs_first",
        met,
        f"back to back: run {len(rates)} at {rates[-1]}/s is {shown:.0%} of run 1's {rates[0]}/s "
        f"(target ≥ {LAST_VS_FIRST:.0%}: {_met(met)})",
    )


def series_rates(results: Sequence[Mapping[str, object]]) -> list[float]:
    """Each run's end-to-end rate, from its JSON line (0.0 where it has none)."""
    return [_number(r, "instances_per_s") or 0.0 for r in results]


def series_line(results: Sequence[Mapping[str, object]]) -> dict[str, object]:
    """The JSON object `make bench-series` prints last, from each run's own JSON line."""
    rates = series_rates(results)
    verdict = series_verdict(rates)
    return {
        "runs": len(results),
        "instances_per_s": rates,
        "p99_ms": [r.get("p99_ms") for r in results],
        "cpu_ms_per_instance": [r.get("cpu_ms_per_instance") for r in results],
        "last_vs_first": round(rates[-1] / rates[0], 3) if len(rates) >= 2 and rates[0] > 0 else None,
        "targets_met": targets_met([verdict]),
    }
