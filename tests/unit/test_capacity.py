"""tools.capacity: the sizing arithmetic of docs/capacity.md, and the doc kept to it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tools import capacity
from tools.capacity import BASIS, Basis

ROOT = Path(__file__).resolve().parents[2]


def test_a_replica_is_planned_at_65_percent_of_a_core() -> None:
    assert capacity.replicas_for(0.65) == 1  # exactly one replica's planned load, not two by a float's bit
    assert capacity.replicas_for(0.66) == 2
    assert capacity.replicas_for(0.0) == 1
    assert capacity.replicas_for(capacity.cores(5000, 2.41)) == 19  # 12.05 cores / 0.65 = 18.5


def test_every_stage_that_can_have_two_replicas_has_them() -> None:
    assert capacity.stage_replicas(0.38, 500) == 2  # a fifth of a core of work
    assert capacity.stage_replicas(3.5, 500) == 3


def test_the_lag_threshold_is_about_a_second_of_a_replicas_planned_work() -> None:
    assert capacity.lag_threshold(0.38) == 1700  # 1,710/s
    assert capacity.lag_threshold(2.41) == 260  # 269/s
    assert capacity.lag_threshold(13.0) == 50  # 50/s: below 100 it is kept as it is
    assert capacity.lag_threshold(10_000.0) == 1  # never zero: KEDA needs a positive threshold


def test_partitions_cover_twice_each_consumers_sizing_in_multiples_of_24() -> None:
    small = {"routing": 0.38, "deid": 2.41, "delivery": 1.28}
    assert capacity.partitions_for(small, 500) == 24
    assert capacity.partitions_for(small, 5000) == 48  # deid 19 replicas, autoscaling to 38
    heavy = {**small, "delivery": 10.0}  # 50 cores: 77 replicas, 154 with headroom
    assert capacity.partitions_for(heavy, 5000) == 168


def test_chart_defaults_from_the_basis() -> None:
    defaults = capacity.chart_defaults(BASIS)
    assert list(defaults) == ["ingest", "routing", "deid", "delivery"]
    assert defaults["ingest"].lag_threshold is None, "ingest reads no topic"
    for sized in defaults.values():
        assert sized.min_replicas == 2 and sized.max_replicas == 2 * sized.replicas
    assert [d.replicas for d in defaults.values()] == [3, 2, 2, 2]


def test_audits_single_writer_keeps_up_with_the_peak_but_not_ten_times_it() -> None:
    assert capacity.PEAK < capacity.audit_limit(BASIS) < capacity.GROWTH


def test_the_doc_shows_the_tables_the_basis_gives() -> None:
    doc = (ROOT / "docs" / "capacity.md").read_text()
    missing = [line for line in capacity.markdown(BASIS).splitlines() if line and line not in doc.splitlines()]
    assert not missing, "docs/capacity.md is not what `python -m tools.capacity` prints:\n" + "\n".join(missing)


def _bench_line(**overrides: object) -> str:
    figures = dict(BASIS.ms)
    return json.dumps({"instances": 2000, "cpu_ms_by_process": {**figures, **overrides}, "storescp": 0.3})


def test_a_bench_line_gives_a_basis() -> None:
    basis = capacity.basis_from_bench(_bench_line(deid=1.31), "run 3")
    assert basis == Basis("run 3", {**BASIS.ms, "deid": 1.31})


def test_a_line_that_is_not_the_benchs_is_refused_with_what_is_missing() -> None:
    with pytest.raises(ValueError, match="no cpu_ms_by_process"):
        capacity.basis_from_bench('{"instances": 2000}', "x")
    partial = json.dumps({"cpu_ms_by_process": {"ingest": 1.0, "deid": 1.0}})
    with pytest.raises(ValueError, match="no CPU figure for audit, delivery, ferretdb, gateway, kafka"):
        capacity.basis_from_bench(partial, "x")


def test_the_command_prints_the_tables_of_a_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "bench.log"
    run.write_text("sending 2000 instances over 2 associations\n" + _bench_line(ingest=1.95) + "\n")
    assert capacity.main(["--bench", str(run)]) == 0
    out = capsys.readouterr().out
    assert f"From {run}" in out
    assert "| ingest | 1.95 | 0.97 | ⌈1.50⌉ = **2** |" in out


def test_the_command_says_what_is_wrong_with_its_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert capacity.main(["--bench", str(tmp_path / "missing.log")]) == 2
    assert "missing.log" in capsys.readouterr().err
    empty = tmp_path / "empty.log"
    empty.write_text("")
    assert capacity.main(["--bench", str(empty)]) == 2
