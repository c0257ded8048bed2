"""`python -m tools.capacity`: the arithmetic of docs/capacity.md. From the CPU each process spent per
instance in one `make bench` run (the `cpu_ms_by_process` of its JSON line), the cores and replicas each
stage needs at a sustained rate, the partitions that let them scale, and the Helm chart's defaults for
the 500/s peak. The command prints the doc's tables, so the doc is regenerated rather than retyped, and
the chart tests hold `charts/imx/values.yaml` to `chart_defaults(BASIS)`.

    python -m tools.capacity                      # the tables from BASIS (what the doc and chart use)
    python -m tools.capacity --bench var/b.json   # the same from another run's JSON line (last line)
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

PLANNED_SHARE = 0.65  # each replica is planned at 65% of one core: the chart's autoscaling target
HEADROOM = 2  # autoscaling may go to twice a stage's sizing, for bursts and draining a backlog
MIN_REPLICAS = 2  # a stage keeps running through one pod's restart (PodDisruptionBudget maxUnavailable 1)
DESIGN_PARTITIONS = 24  # ../DESIGN.md's partitions per pipeline topic; counts are chosen in multiples of it
# A partner's feed has at least 3: the peak is spread over many partners, and each partner topic
# multiplies the cluster's partitions (three lanes each).
PARTNER_PARTITIONS = 3
PEAK = 500  # the national peak, instances/s: the chart's defaults
GROWTH = 5000  # ten times the peak

STAGES = ("ingest", "routing", "deid", "delivery", "audit")
CONSUMERS = ("routing", "deid", "delivery")  # bounded by their input topics' partitions
AUTOSCALED = ("ingest", *CONSUMERS)  # audit's tamper-evident log has a single writer: one replica
TIMES = "\u00d7"  # the doc's multiplication sign
INFRASTRUCTURE = {"Kafka": ("kafka",), "database (PostgreSQL + FerretDB here)": ("postgres", "ferretdb")}


@dataclass(frozen=True)
class Basis:
    """One `make bench` run's CPU per instance, by process (ms), and where it comes from."""

    source: str
    ms: Mapping[str, float]


# The most expensive recorded run of the current hot path (README Figures, twenty-seventh session):
# `make clean && make bench` at 4282f5b, 2026-12-05 14:39, first of three, 12.8 ms in all, on a slow
# day (10^7 Python additions 1.24 s). Only audit's batch writes changed since, and they cost less. The
# same code on a quick day spends about half (6.9 ms at 4796ae2, 2026-12-05 21:12): sizing from the
# slow day errs on the side of too many cores.
BASIS = Basis(
    source="`make clean && make bench` at 4282f5b, 2026-12-05 14:39 (first run of three; a slow day)",
    ms={
        "ingest": 3.50,
        "deid": 2.41,
        "gateway": 1.94,
        "delivery": 1.28,
        "kafka": 1.28,
        "audit": 0.88,
        "postgres": 0.61,
        "ferretdb": 0.55,
        "routing": 0.38,
    },
)


def cores(rate: float, ms: float) -> float:
    """Cores of work for `rate` instances/s at `ms` of CPU each."""
    return rate * ms / 1000


def replicas_for(work: float) -> int:
    """Replicas, each planned at PLANNED_SHARE of a core, for `work` cores (at least one)."""
    # Rounded first so that 0.65 / 0.65 is one replica, not two by a float's last bit.
    return max(1, math.ceil(round(work / PLANNED_SHARE, 9)))


def planned_rate(ms: float, replicas: int = 1) -> float:
    """Instances/s that `replicas` keep up with at their planned load."""
    return replicas * PLANNED_SHARE * 1000 / ms


def lag_threshold(ms: float) -> int:
    """KEDA's lag per replica: about one second of one replica's work at its planned load, rounded down
    to two significant figures (a threshold, not a measurement)."""
    per_second = int(planned_rate(ms))
    if per_second < 100:
        return max(1, per_second)
    scale = 10 ** (len(str(per_second)) - 2)
    return per_second // scale * scale


def stage_replicas(ms: float, rate: float) -> int:
    """The replicas a stage needs at `rate`, with at least MIN_REPLICAS for availability."""
    return max(MIN_REPLICAS, replicas_for(cores(rate, ms)))


def partitions_for(ms: Mapping[str, float], rate: float) -> int:
    """Partitions per pipeline topic: room for every consuming stage to autoscale to HEADROOM times its
    sizing, in multiples of DESIGN_PARTITIONS (never fewer)."""
    most = max(HEADROOM * stage_replicas(ms[name], rate) for name in CONSUMERS)
    return DESIGN_PARTITIONS * max(1, math.ceil(most / DESIGN_PARTITIONS))


def partner_partitions(gateway_ms: float, rate: float) -> int:
    """Partitions of a partner's feed for one gateway replica per partition to take `rate`/s."""
    return replicas_for(cores(rate, gateway_ms))


def partner_partitions_default(basis: Basis) -> int:
    """The chart's partitions per partner feed: a partner receiving the whole peak, or the floor."""
    return max(PARTNER_PARTITIONS, partner_partitions(basis.ms["gateway"], PEAK))


@dataclass(frozen=True)
class Defaults:
    """What the chart sets for one autoscaled stage."""

    replicas: int
    min_replicas: int
    max_replicas: int
    lag_threshold: int | None  # KEDA's, for the consuming stages


def chart_defaults(basis: Basis, rate: float = PEAK) -> dict[str, Defaults]:
    """The chart's per-stage defaults at `rate`: replicas when autoscaling is off, the autoscaling
    bounds, and KEDA's lag per replica."""
    out = {}
    for name in AUTOSCALED:
        replicas = stage_replicas(basis.ms[name], rate)
        lag = lag_threshold(basis.ms[name]) if name in CONSUMERS else None
        out[name] = Defaults(replicas, MIN_REPLICAS, HEADROOM * replicas, lag)
    return out


def audit_limit(basis: Basis) -> float:
    """Instances/s that audit's single writer keeps up with at its planned load."""
    return planned_rate(basis.ms["audit"])


# --- the doc's tables -------------------------------------------------------------------------------


def _n(value: float) -> str:
    return f"{value:,.2f}"


def sizing_table(basis: Basis) -> list[str]:
    rows = [
        "| stage | ms / instance | 500/s: cores | 500/s: replicas | 5,000/s: cores | 5,000/s: replicas |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name in STAGES:
        ms = basis.ms[name]
        low, high = cores(PEAK, ms), cores(GROWTH, ms)
        low_n, high_n = replicas_for(low), replicas_for(high)
        sized = stage_replicas(ms, PEAK) if name in AUTOSCALED else low_n
        low_cell = f"⌈{low / PLANNED_SHARE:.2f}⌉ = " + (f"**{low_n}**" if sized == low_n else f"{low_n} → **{sized}**")
        high_cell = f"⌈{high / PLANNED_SHARE:.2f}⌉ = " + (
            f"**{high_n}**" if name in AUTOSCALED else f"{high_n}, **but only 1 is possible**"
        )
        rows.append(f"| {name} | {ms:.2f} | {_n(low)} | {low_cell} | {_n(high)} | {high_cell} |")
    gateway = basis.ms["gateway"]
    rows.append(
        f"| gateway, per partner | {gateway:.2f} {TIMES} that partner's share | a partner receiving all 500/s: "
        f"{_n(cores(PEAK, gateway))} | **{partner_partitions(gateway, PEAK)}** | {_n(cores(GROWTH, gateway))} "
        f"| **{partner_partitions(gateway, GROWTH)}** |"
    )
    for label, processes in INFRASTRUCTURE.items():
        ms = sum(basis.ms[p] for p in processes)
        rows.append(
            f"| {label} | {ms:.2f} | {_n(cores(PEAK, ms))}, / 0.65 = **{_n(cores(PEAK, ms) / PLANNED_SHARE)} cores** "
            f"| — | {_n(cores(GROWTH, ms))}, / 0.65 = **{_n(cores(GROWTH, ms) / PLANNED_SHARE)} cores** | — |"
        )
    return rows


def partitions_table(basis: Basis) -> list[str]:
    rows = [
        "| rate | routing (reads `imx.ingested.v1`) | deid (`imx.routed.*`) | delivery (`imx.prepared.*`) "
        "| partitions per pipeline topic |",
        "| --- | --- | --- | --- | --- |",
    ]
    for rate, label in ((PEAK, "500/s"), (GROWTH, "5,000/s")):
        cells = [f"{HEADROOM} {TIMES} {stage_replicas(basis.ms[name], rate)}" for name in CONSUMERS]
        rows.append(f"| {label} | {' | '.join(cells)} | **{partitions_for(basis.ms, rate)}** |")
    return rows


def chart_table(basis: Basis) -> list[str]:
    defaults = chart_defaults(basis)
    rows = [
        "| service | replicas (autoscaling off) | autoscaling min / max | KEDA lag per replica |",
        "| --- | --- | --- | --- |",
    ]
    for name, d in defaults.items():
        lag = "— (CPU only: it reads no topic)" if d.lag_threshold is None else f"{d.lag_threshold:,}"
        rows.append(f"| {name} | {d.replicas} | {d.min_replicas} / {d.max_replicas} | {lag} |")
    rows.append("| audit | 1 (always) | — | — |")
    rows.append(f"| `kafka.topicPartitions` | {partitions_for(basis.ms, PEAK)} | | |")
    rows.append(f"| `kafka.partnerTopicPartitions` | {partner_partitions_default(basis)} | | |")
    return rows


def markdown(basis: Basis) -> str:
    return "\n".join([*sizing_table(basis), "", *partitions_table(basis), "", *chart_table(basis)]) + "\n"


def basis_from_bench(line: str, source: str) -> Basis:
    """A Basis from `make bench`'s JSON line (its `cpu_ms_by_process`). ValueError when it has none or
    lacks a process the tables need."""
    figures = json.loads(line).get("cpu_ms_by_process")
    if not isinstance(figures, dict):
        raise ValueError("the line has no cpu_ms_by_process: is it `make bench`'s last line?")
    missing = sorted({*STAGES, "gateway", "kafka", "postgres", "ferretdb"} - set(figures))
    if missing:
        raise ValueError(f"the run has no CPU figure for {', '.join(missing)}")
    return Basis(source, {name: float(value) for name, value in figures.items()})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.capacity", description=__doc__.split("\n\n")[0])
    parser.add_argument("--bench", type=Path, help="a file whose last line is `make bench`'s JSON (default: BASIS)")
    args = parser.parse_args(argv)
    basis = BASIS
    if args.bench is not None:
        try:
            lines = args.bench.read_text().strip().splitlines()
            basis = basis_from_bench(lines[-1] if lines else "", str(args.bench))
        except (OSError, ValueError) as exc:
            print(f"{args.bench}: {exc}", file=sys.stderr)
            return 2
    print(f"From {basis.source}:\n")
    print(markdown(basis), end="")
    print(f"\naudit's single writer keeps up with {planned_rate(basis.ms['audit']):,.0f}/s at its planned load.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
