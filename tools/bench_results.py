"""The pure arithmetic of `make bench`: latencies from receipts, percentiles, CPU per instance and the
JSON line it prints last. No sockets, no clocks: everything is given."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class StoredReceipt:
    """What `make bench` keeps of one STORED DeliveryReceipt."""

    delivery_id: str
    ingested_at_ms: int
    stored_at_ms: int


def latencies_ms(receipts: Iterable[StoredReceipt], since_ms: float) -> list[float]:
    """accepted → stored per delivery, once per delivery id (a gateway may report one twice), for
    instances ingested at or after `since_ms` (older ones belong to an earlier run)."""
    first: dict[str, StoredReceipt] = {}
    for receipt in receipts:
        if receipt.ingested_at_ms < since_ms:
            continue
        seen = first.get(receipt.delivery_id)
        if seen is None or receipt.stored_at_ms < seen.stored_at_ms:
            first[receipt.delivery_id] = receipt
    return sorted(float(r.stored_at_ms - r.ingested_at_ms) for r in first.values())


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile (0 < p ≤ 1) of values sorted ascending; NaN when there are none."""
    if not sorted_values:
        return math.nan
    rank = math.ceil(p * len(sorted_values))
    return sorted_values[min(len(sorted_values), max(rank, 1)) - 1]


def cpu_deltas(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
    """CPU seconds spent by each process between two samples. A process missing from either sample
    (started or stopped in between) counts what the sample it is in says, never below zero."""
    return {name: max(0.0, after.get(name, 0.0) - before.get(name, 0.0)) for name in sorted({*before, *after})}


def per_instance_ms(seconds: Mapping[str, float], instances: int) -> dict[str, float]:
    """CPU milliseconds per instance for each process, largest first."""
    if instances <= 0:
        return {}
    ranked = sorted(seconds.items(), key=lambda item: (-item[1], item[0]))
    return {name: round(value * 1000 / instances, 2) for name, value in ranked}


def machine_figures(
    before: Mapping[str, float], after: Mapping[str, float], known_s: float, instances: int
) -> dict[str, float]:
    """The whole machine over the CPU window, per instance (ms): busy CPU, the part of it that the
    processes the bench samples (and its senders and itself, together `known_s`) do not account for:
    kernel threads such as write-back and the journal, processes the bench does not name; time waiting
    for the disk, idle, and stolen by the hypervisor. A run slower than another at the same CPU per
    process shows here where the difference went."""
    if instances <= 0 or not before or not after:
        return {}
    delta = cpu_deltas(before, after)  # by kind of time, never below zero, as per process
    per = 1000 / instances
    return {
        "machine_busy_cpu_ms_per_instance": round(delta["busy"] * per, 2),
        "unlisted_cpu_ms_per_instance": round(max(0.0, delta["busy"] - known_s) * per, 2),
        "iowait_ms_per_instance": round(delta["iowait"] * per, 2),
        "idle_ms_per_instance": round(delta["idle"] * per, 2),
        "steal_ms_per_instance": round(delta["steal"] * per, 2),
    }


def idle_share(before: Mapping[str, float], after: Mapping[str, float]) -> float | None:
    """The share of the machine's CPU time that nothing used (idle, or waiting for the disk) between two
    samples of `machine_cpu_seconds`; None without time between them. Taken from the first C-STORE to the
    last arrival, it says whether the run's rate was bounded by the CPUs (near 0) or by waits; the CPU
    window's own idle figure also holds the settling after the last arrival."""
    if not before or not after:
        return None
    delta = cpu_deltas(before, after)
    total = sum(delta.values())
    if total <= 0:
        return None
    return round((delta.get("idle", 0.0) + delta.get("iowait", 0.0)) / total, 3)


STOLEN_SHARE_WARNING = 0.05  # of the time our CPUs wanted (busy + stolen): above it the host set the pace


def host_warning(figures: Mapping[str, object]) -> str | None:
    """A line for the reader when the hypervisor took a noticeable share of the CPU during the run (a
    first run after `make clean` lost 11.5 ms per instance to it on 2026-12-05 and ran at half speed):
    the rate and the CPU per instance then measure the host as much as imx."""
    stolen, busy = figures.get("steal_ms_per_instance"), figures.get("machine_busy_cpu_ms_per_instance")
    if not isinstance(stolen, float | int) or not isinstance(busy, float | int) or busy <= 0:
        return None
    share = stolen / (busy + stolen)
    if share <= STOLEN_SHARE_WARNING:
        return None
    return (
        f"note: the hypervisor ran something else for {share:.0%} of the time our CPUs wanted to run "
        f"({stolen} ms per instance): these figures measure the host as much as imx; run again"
    )


def rate(count: int, seconds: float) -> float:
    return round(count / seconds, 1) if seconds > 0 else 0.0


@dataclass(frozen=True)
class OrthancFigures:
    instances: int
    per_s: float
    cpu_ms_per_instance: float
    storescp_cpu_ms_per_instance: float = 0.0
    bursts: tuple[tuple[float, float], ...] = ()  # (instances/s, CPU ms per instance) of every burst


def orthanc_at_its_best(bursts: list[dict[str, float]]) -> OrthancFigures:
    """Orthanc's figures over several bursts of the same run, each at its best: the highest rate and the
    lowest CPU per instance (the two may come from different bursts), so both of imx's ratios are taken
    against the strictest reading. Its rate moved by 9% over three bursts of the graded job on the
    2-core machine (61.8-67.5/s, 2026-12-05), and by a factor of two with the script used before
    (bench_orthanc's docstring), so one burst can flatter imx. The storescp figure is the fastest burst's."""
    if not bursts:
        raise ValueError("no Orthanc burst to take figures from")
    fastest = max(bursts, key=lambda b: b["per_s"])
    return OrthancFigures(
        instances=int(fastest["instances"]),
        per_s=fastest["per_s"],
        cpu_ms_per_instance=min(b["cpu_ms_per_instance"] for b in bursts),
        storescp_cpu_ms_per_instance=fastest["storescp_cpu_ms_per_instance"],
        bursts=tuple((b["per_s"], b["cpu_ms_per_instance"]) for b in bursts),
    )


@dataclass
class BenchRun:
    """What one `make bench` run observed."""

    sent: int
    stored: int  # files storescp wrote
    seconds: float  # sender's first C-STORE → last file written
    ingest_seconds: float  # sender's first C-STORE → last sender finished
    latencies: list[float]  # accepted → stored, sorted
    cpu_seconds: dict[str, float]  # per process, between the two samples
    profile: str
    sender: str
    content: str
    orthanc: OrthancFigures | None = None  # the graded job (bench_orthanc.GRADED_JOB)
    orthanc_straight: OrthancFigures | None = None  # the copy sent from memory, never stored
    extra: dict[str, object] = field(default_factory=dict)


# The partner's PACS (the bench's storescp) is the receiving end, not part of the exchange: Orthanc's
# figure is its own process alone, its storescp reported apart, so imx's total leaves its storescp out
# too and reports it beside, as `pacs_cpu_ms_per_instance`.
PACS_PROCESS = "storescp"


def result_line(run: BenchRun) -> dict[str, object]:
    """The JSON object `make bench` prints last: the keys of earlier versions first, then the new ones."""
    lat = run.latencies
    instances_per_s = rate(run.stored, run.seconds)
    by_process = per_instance_ms(run.cpu_seconds, run.stored)
    exchange_s = sum(s for name, s in run.cpu_seconds.items() if name != PACS_PROCESS)
    total = round(exchange_s * 1000 / run.stored, 1) if run.stored else None
    pacs = round(run.cpu_seconds.get(PACS_PROCESS, 0.0) * 1000 / run.stored, 2) if run.stored else None
    result: dict[str, object] = {
        "instances": run.stored,
        "sent": run.sent,
        "seconds": round(run.seconds, 2),
        "instances_per_s": instances_per_s,
        "ingest_per_s": rate(run.sent, run.ingest_seconds),
        "p50_ms": _round(percentile(lat, 0.50)),
        "p95_ms": _round(percentile(lat, 0.95)),
        "p99_ms": _round(percentile(lat, 0.99)),
        "mean_ms": round(statistics.fmean(lat)) if lat else None,
        "profile": run.profile,
        "sender": run.sender,
        "content": run.content,
        "receipts": len(lat),
        "cpu_ms_per_instance": total,
        "cpu_ms_by_process": by_process,
    }
    orthanc = run.orthanc
    rate_ratio, cpu_ratio = _ratios(orthanc, instances_per_s, total)
    result["orthanc_instances"] = orthanc.instances if orthanc else None
    result["orthanc_exchange_per_s"] = orthanc.per_s if orthanc else None
    result["ratio_vs_orthanc"] = rate_ratio
    result["orthanc_cpu_ms_per_instance"] = orthanc.cpu_ms_per_instance if orthanc else None
    result["orthanc_storescp_cpu_ms_per_instance"] = orthanc.storescp_cpu_ms_per_instance if orthanc else None
    result["pacs_cpu_ms_per_instance"] = pacs
    result["orthanc_bursts"] = [list(b) for b in orthanc.bursts] if orthanc else None
    result["cpu_vs_orthanc"] = cpu_ratio
    straight = run.orthanc_straight
    rate_ratio, cpu_ratio = _ratios(straight, instances_per_s, total)
    result["orthanc_straight_exchange_per_s"] = straight.per_s if straight else None
    result["orthanc_straight_cpu_ms_per_instance"] = straight.cpu_ms_per_instance if straight else None
    result["orthanc_straight_bursts"] = [list(b) for b in straight.bursts] if straight else None
    result["ratio_vs_orthanc_straight"] = rate_ratio
    result["cpu_vs_orthanc_straight"] = cpu_ratio
    result.update(run.extra)
    return result


def _ratios(orthanc: OrthancFigures | None, per_s: float, cpu_ms: float | None) -> tuple[float | None, float | None]:
    """imx's rate over Orthanc's and imx's CPU per instance over Orthanc's (None where either is missing)."""
    if orthanc is None:
        return None, None
    rate_ratio = round(per_s / orthanc.per_s, 2) if orthanc.per_s else None
    cpu_ratio = round(cpu_ms / orthanc.cpu_ms_per_instance, 2) if orthanc.cpu_ms_per_instance and cpu_ms else None
    return rate_ratio, cpu_ratio


def _round(value: float) -> int | None:
    return None if math.isnan(value) else round(value)
