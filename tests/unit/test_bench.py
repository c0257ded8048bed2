"""The pure parts of `make bench`: latencies from receipts, percentiles, CPU deltas, the JSON line,
and which routes the bench owns or must keep out of its way."""

from __future__ import annotations

import json
import math

import pytest

from services.proto_gen.imx.v1 import admin_pb2
from tools.bench_results import (
    BenchRun,
    OrthancFigures,
    StoredReceipt,
    cpu_deltas,
    host_warning,
    idle_share,
    latencies_ms,
    machine_figures,
    orthanc_at_its_best,
    per_instance_ms,
    percentile,
    result_line,
)
from tools.bench_setup import ROUTE_ID, bench_owned_routes, competing_routes, own_route, stale_orgs
from tools.proc_cpu import (
    cpu_seconds,
    descendants,
    machine_cpu_from_stat_line,
    machine_cpu_seconds,
    parents,
    rss_peak_mb,
    sample,
    tree_cpu_seconds,
)

OLD_KEYS = [
    "instances",
    "sent",
    "seconds",
    "instances_per_s",
    "ingest_per_s",
    "p50_ms",
    "p95_ms",
    "p99_ms",
    "mean_ms",
    "profile",
    "sender",
    "content",
]
NEW_KEYS = [
    "orthanc_exchange_per_s",
    "ratio_vs_orthanc",
    "cpu_ms_per_instance",
    "cpu_ms_by_process",
    "orthanc_cpu_ms_per_instance",
    "pacs_cpu_ms_per_instance",
    "cpu_vs_orthanc",
    "orthanc_bursts",
    "orthanc_straight_exchange_per_s",
    "ratio_vs_orthanc_straight",
    "cpu_vs_orthanc_straight",
]


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.50) == 50
    assert percentile(values, 0.95) == 95
    assert percentile(values, 0.99) == 99
    assert percentile(values, 1.0) == 100
    assert percentile([7.0], 0.99) == 7
    assert math.isnan(percentile([], 0.5))


def test_latencies_count_each_delivery_once_and_skip_earlier_runs() -> None:
    receipts = [
        StoredReceipt("a", 1_000, 1_250),
        StoredReceipt("a", 1_000, 1_900),  # reported again (a gateway restart): the first store counts
        StoredReceipt("b", 1_100, 1_200),
        StoredReceipt("old", 500, 2_000),  # ingested before this run started
    ]
    assert latencies_ms(receipts, since_ms=1_000) == [100.0, 250.0]


def test_cpu_deltas_per_process_never_negative() -> None:
    before = {"ingest": 10.0, "kafka": 100.0, "gone": 5.0}
    after = {"ingest": 12.5, "kafka": 101.0, "new": 0.25}
    assert cpu_deltas(before, after) == {"gone": 0.0, "ingest": 2.5, "kafka": 1.0, "new": 0.25}


def test_per_instance_ms_largest_first() -> None:
    assert list(per_instance_ms({"a": 1.0, "b": 3.0}, 1000).items()) == [("b", 3.0), ("a", 1.0)]
    assert per_instance_ms({"a": 1.0}, 0) == {}


def _run(orthanc: OrthancFigures | None) -> BenchRun:
    return BenchRun(
        sent=200,
        stored=200,
        seconds=4.0,
        ingest_seconds=2.0,
        latencies=sorted(float(v) for v in range(200)),
        cpu_seconds={"ingest": 1.0, "kafka": 0.5},
        profile="basic",
        sender="storescu x2",
        content="unique",
        orthanc=orthanc,
    )


def test_result_line_keeps_the_old_keys_first_and_adds_the_new_ones() -> None:
    line = result_line(_run(OrthancFigures(200, 25.0, 17.7, 1.1)))
    assert list(line)[: len(OLD_KEYS)] == OLD_KEYS
    assert all(key in line for key in NEW_KEYS)
    assert line["instances_per_s"] == 50.0
    assert line["ingest_per_s"] == 100.0
    assert line["ratio_vs_orthanc"] == 2.0
    assert line["cpu_ms_per_instance"] == 7.5
    assert line["cpu_ms_by_process"] == {"ingest": 5.0, "kafka": 2.5}
    assert line["orthanc_cpu_ms_per_instance"] == 17.7
    assert line["p50_ms"] == 99 and line["p99_ms"] == 197
    json.dumps(line)  # one JSON line, nothing that json cannot write


def test_cpu_per_instance_leaves_the_partners_pacs_out_as_orthancs_does() -> None:
    run = _run(OrthancFigures(200, 25.0, 15.0, 0.4))
    run.cpu_seconds = {"ingest": 1.0, "kafka": 0.5, "storescp": 0.3}
    line = result_line(run)
    assert line["cpu_ms_per_instance"] == 7.5  # ingest and Kafka: the exchange's own processes
    assert line["pacs_cpu_ms_per_instance"] == 1.5  # the receiving storescp, beside it
    assert line["cpu_ms_by_process"] == {"ingest": 5.0, "kafka": 2.5, "storescp": 1.5}
    assert line["cpu_vs_orthanc"] == 0.5


def _burst(per_s: float, cpu_ms: float, storescp_ms: float = 0.5) -> dict[str, float]:
    figures = {"per_s": per_s, "cpu_ms_per_instance": cpu_ms, "storescp_cpu_ms_per_instance": storescp_ms}
    return {"instances": 200, **figures}


def test_ratios_are_taken_against_orthancs_best_burst_not_its_last() -> None:
    # The last burst is the slowest: one burst alone would have flattered imx by 1.8x.
    orthanc = orthanc_at_its_best([_burst(40.0, 30.0, 0.6), _burst(45.0, 28.0, 0.7), _burst(25.0, 48.0)])
    assert orthanc.per_s == 45.0 and orthanc.storescp_cpu_ms_per_instance == 0.7
    line = result_line(_run(orthanc))  # imx: 50/s at 7.5 ms per instance
    assert line["orthanc_exchange_per_s"] == 45.0
    assert line["ratio_vs_orthanc"] == 1.11
    assert line["orthanc_bursts"] == [[40.0, 30.0], [45.0, 28.0], [25.0, 48.0]]


def test_orthancs_cpu_is_its_lowest_even_from_another_burst_than_its_fastest() -> None:
    orthanc = orthanc_at_its_best([_burst(45.0, 30.0), _burst(44.0, 15.0)])
    assert orthanc.per_s == 45.0 and orthanc.cpu_ms_per_instance == 15.0
    assert result_line(_run(orthanc))["cpu_vs_orthanc"] == 0.5  # 7.5 ms against 15, not against 30


def test_orthanc_sending_from_memory_has_ratios_of_its_own_beside_the_graded_ones() -> None:
    run = _run(orthanc_at_its_best([_burst(65.0, 15.0), _burst(60.0, 16.0)]))
    run.orthanc_straight = orthanc_at_its_best([_burst(95.0, 10.0), _burst(100.0, 10.5)])
    line = result_line(run)  # imx: 50/s at 7.5 ms per instance
    assert (line["ratio_vs_orthanc"], line["cpu_vs_orthanc"]) == (0.77, 0.5)
    assert line["orthanc_straight_exchange_per_s"] == 100.0
    assert line["orthanc_straight_cpu_ms_per_instance"] == 10.0
    assert (line["ratio_vs_orthanc_straight"], line["cpu_vs_orthanc_straight"]) == (0.5, 0.75)
    assert line["orthanc_straight_bursts"] == [[95.0, 10.0], [100.0, 10.5]]


def test_orthanc_figures_need_at_least_one_burst() -> None:
    with pytest.raises(ValueError):
        orthanc_at_its_best([])


def test_result_line_without_orthanc_or_arrivals() -> None:
    line = result_line(_run(None))
    assert line["orthanc_exchange_per_s"] is None and line["ratio_vs_orthanc"] is None
    assert line["cpu_vs_orthanc"] is None and line["orthanc_bursts"] is None
    assert line["ratio_vs_orthanc_straight"] is None and line["orthanc_straight_bursts"] is None
    empty = _run(None)
    empty.stored, empty.latencies = 0, []
    line = result_line(empty)
    assert line["instances_per_s"] == 0.0 and line["p99_ms"] is None and line["cpu_ms_per_instance"] is None
    json.dumps(line)


def _route(route_id: str, partner: str, orgs: list[str], enabled: bool = True) -> admin_pb2.Route:
    return admin_pb2.Route(
        route_id=route_id, partner_id=partner, enabled=enabled, match=admin_pb2.RouteMatch(source_orgs=orgs)
    )


def test_routes_in_the_way_of_the_bench() -> None:
    routes = [
        _route("care-transfer", "st-elsewhere", ["trust-north"]),  # other senders only: harmless
        _route("research", "research-lab", []),  # any sender: would copy every bench instance
        _route("off", "print3d", [], enabled=False),
        _route("named", "print3d", ["bench-1234"]),
        _route(ROUTE_ID, "bench-partner", ["bench-0000"]),
        _route("bench-abcd", "bench-partner", ["bench-abcd"]),  # an earlier version's per-run route
    ]
    assert [r.route_id for r in competing_routes(routes, "bench-1234")] == ["research", "named"]
    assert bench_owned_routes(routes) == [ROUTE_ID, "bench-abcd"]
    chaos = [*routes, _route("chaos", "chaos-partner", []), _route("other", "chaos-partner", [])]
    competing = competing_routes(chaos, "chaos-1", "chaos-partner", ["chaos"])  # make chaos's own
    assert [r.route_id for r in competing] == ["research"]


def test_a_runs_own_route_takes_all_its_sender_sends_first() -> None:
    route = own_route("chaos-fuzz", "make chaos", "chaos-partner", "chaos-fuzz-1", "")
    assert (route.route_id, route.partner_id, route.profile) == ("chaos-fuzz", "chaos-partner", "")
    assert route.enabled and route.priority == 1 and list(route.match.source_orgs) == ["chaos-fuzz-1"]


def test_stale_orgs_are_the_bench_prefix_only() -> None:
    orgs = [admin_pb2.Organisation(org_id=o) for o in ("trust-north", "bench-1", "bench-2", "benchmark")]
    assert stale_orgs(orgs, keep="bench-2") == ["bench-1"]


def test_cpu_of_this_process_from_proc() -> None:
    import os

    pid = os.getpid()
    own = cpu_seconds(pid)  # read first: the process keeps spending CPU between the two reads
    assert own > 0
    assert tree_cpu_seconds(pid) >= own
    assert cpu_seconds(2**22 + 7) == 0.0  # no such process
    assert set(sample({"me": (pid, False), "tree": (pid, True)})) == {"me", "tree"}


def test_machine_cpu_from_proc_stat() -> None:
    import os

    ticks = os.sysconf("SC_CLK_TCK")
    # user nice system idle iowait irq softirq steal guest guest_nice
    line = f"cpu  {ticks * 10} {ticks} {ticks * 3} {ticks * 50} {ticks * 2} 0 {ticks} {ticks * 4} 0 0"
    assert machine_cpu_from_stat_line(line) == {"busy": 15.0, "iowait": 2.0, "idle": 50.0, "steal": 4.0}
    now = machine_cpu_seconds()
    assert set(now) == {"busy", "iowait", "idle", "steal"} and now["busy"] > 0


def test_machine_figures_show_the_cpu_no_sampled_process_accounts_for() -> None:
    before = {"busy": 100.0, "iowait": 1.0, "idle": 50.0, "steal": 0.0}
    after = {"busy": 124.0, "iowait": 2.0, "idle": 56.0, "steal": 0.5}
    # 24 s busy over 2,000 instances, 20 s of it in the processes the bench samples.
    figures = machine_figures(before, after, known_s=20.0, instances=2000)
    assert figures == {
        "machine_busy_cpu_ms_per_instance": 12.0,
        "unlisted_cpu_ms_per_instance": 2.0,
        "iowait_ms_per_instance": 0.5,
        "idle_ms_per_instance": 3.0,
        "steal_ms_per_instance": 0.25,
    }
    # Sampled processes that read more than the machine (ticks rounded apart) never give a negative share.
    assert machine_figures(before, after, known_s=30.0, instances=2000)["unlisted_cpu_ms_per_instance"] == 0.0
    assert machine_figures(before, after, 20.0, 0) == {} and machine_figures({}, after, 20.0, 10) == {}


def test_a_run_the_hypervisor_slowed_says_so() -> None:
    slowed = {"machine_busy_cpu_ms_per_instance": 21.55, "steal_ms_per_instance": 11.5}
    warning = host_warning(slowed)
    assert warning is not None and "35%" in warning and "11.5 ms per instance" in warning
    # A little steal, none, or a run without the machine's figures (nothing arrived): no warning.
    assert host_warning({"machine_busy_cpu_ms_per_instance": 14.0, "steal_ms_per_instance": 0.3}) is None
    assert host_warning({"machine_busy_cpu_ms_per_instance": 14.0, "steal_ms_per_instance": 0.0}) is None
    assert host_warning({"instances_per_s": 120.0}) is None


def test_process_tree_and_peak_resident_set_from_proc() -> None:
    import os

    pid, parent = os.getpid(), os.getppid()
    assert pid in parents()[parent]
    assert pid in descendants(parent, parents()) and parent not in descendants(pid, parents())
    assert rss_peak_mb(pid) > 1.0  # a Python interpreter holds more than a MiB
    assert rss_peak_mb(2**22 + 7) == 0.0


def test_renumbered_uids_keep_their_length_and_agree_everywhere() -> None:
    from tools.bench import renumber_uids

    uid = b"2.25.123456789012345678901234567890"
    header = b"meta" + uid + b"\x00" + b"sop" + uid + b"\x00" + b"class 1.2.840.10008.5.1.4.1.1.2\x00"
    pixels = b"\xe0\x7f\x10\x00" + b"2.25.999999999999"  # pixel bytes are never touched
    out = renumber_uids(header + pixels, offset=5)
    assert len(out) == len(header + pixels)
    assert out.count(b"2.25.123456789012345678901234567895") == 2
    assert b"1.2.840.10008.5.1.4.1.1.2" in out
    assert out.endswith(pixels)
    assert renumber_uids(b"x2.25.199999999999x", offset=1) == b"x2.25.199900000000x"  # wraps, same length


class _FakeBroker:
    """Feed `f` with two partitions: 0 holds offsets 2..10, 1 holds 0..4; the group committed 7 on 0."""

    def __init__(self) -> None:
        self.altered: dict[object, object] = {}

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        return {0, 1} if topic == "f" else None

    def end_offsets(self, partitions: list[object]) -> dict[object, int]:
        return {tp: (10, 4)[tp.partition] for tp in partitions}  # type: ignore[attr-defined]

    def beginning_offsets(self, partitions: list[object]) -> dict[object, int]:
        return {tp: (2, 0)[tp.partition] for tp in partitions}  # type: ignore[attr-defined]

    def list_group_offsets(self, groups: dict[str, None]) -> dict[str, dict[object, object]]:
        from kafka import TopicPartition
        from kafka.structs import OffsetAndMetadata

        return {g: {TopicPartition("f", 0): OffsetAndMetadata(7, "", -1)} for g in groups}

    def alter_group_offsets(self, group: str, offsets: dict[object, object]) -> None:
        self.altered = offsets


def test_a_groups_backlog_is_skipped_to_the_end_of_its_feeds() -> None:
    from tools.feed_backlog import skip_to_end

    broker = _FakeBroker()
    assert skip_to_end(broker, broker, "g", ["f", "absent"]) == 3 + 4
    assert sorted((tp.partition, o.offset) for tp, o in broker.altered.items()) == [(0, 10), (1, 4)]  # type: ignore[attr-defined]
    assert skip_to_end(broker, broker, "g", ["absent"]) == 0


def test_idle_share_says_whether_the_cpus_set_the_rate() -> None:
    before = {"busy": 100.0, "iowait": 1.0, "idle": 50.0, "steal": 0.0}
    # 20 s of two CPUs: 18 s busy, 0.5 s waiting for the disk, 1.5 s idle.
    after = {"busy": 118.0, "iowait": 1.5, "idle": 51.5, "steal": 0.0}
    assert idle_share(before, after) == 0.1
    assert idle_share(before, before) is None  # no time between the samples
    assert idle_share(before, {}) is None  # the run never reached its last arrival
