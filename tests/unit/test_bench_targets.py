"""What `make bench` and `make bench-series` say of issue 10's targets, from the figures they measured,
and how the series reads each run's output."""

from __future__ import annotations

import sys

import pytest

from tools.bench_series import run_once
from tools.bench_targets import (
    cpu_verdict,
    p99_verdict,
    rate_verdict,
    run_verdicts,
    series_line,
    series_verdict,
    targets_met,
)

# The first run of 2026-12-05 at 23:34 on a slow machine (its JSON line, trimmed).
SLOW_DAY = {
    "instances_per_s": 180.7,
    "p99_ms": 1034,
    "cpu_ms_per_instance": 9.1,
    "orthanc_exchange_per_s": 81.8,
    "orthanc_cpu_ms_per_instance": 11.3,
}


def test_a_run_short_of_both_orthanc_targets_says_by_how_much() -> None:
    rate, cpu, p99 = run_verdicts(SLOW_DAY)
    assert rate.met is False
    assert rate.line == (
        "rate: 180.7/s against Orthanc's 81.8/s, 2.21x (target ≥ 3x: not met; 245.4/s needed, 26% short)"
    )
    assert cpu.met is False
    assert cpu.line == (
        "CPU: 9.1 ms per instance against Orthanc's 11.3 ms, 0.81 of it "
        "(target ≤ 0.5: not met; 5.65 ms allowed, 3.45 ms over)"
    )
    assert p99.met is True
    assert p99.line == "p99 accepted → stored: 1.03 s (target < 2 s: met)"


def test_targets_met_exactly_at_their_bounds() -> None:
    at_bounds = {**SLOW_DAY, "instances_per_s": 245.4, "cpu_ms_per_instance": 5.65, "p99_ms": 1999}
    assert targets_met(run_verdicts(at_bounds)) == {"rate_vs_orthanc": True, "cpu_vs_orthanc": True, "p99": True}
    assert rate_verdict(at_bounds).line.endswith("(target ≥ 3x: met)")
    assert cpu_verdict(at_bounds).line.endswith("(target ≤ 0.5: met)")


def test_a_ratio_just_short_of_its_target_never_shows_as_the_target() -> None:
    short = {**SLOW_DAY, "instances_per_s": 245.1, "cpu_ms_per_instance": 5.66}
    assert rate_verdict(short).line == (
        "rate: 245.1/s against Orthanc's 81.8/s, 2.99x (target ≥ 3x: not met; 245.4/s needed, 0.1% short)"
    )
    assert cpu_verdict(short).line.startswith("CPU: 5.66 ms per instance against Orthanc's 11.3 ms, 0.51 of it (")
    assert cpu_verdict(short).met is False


def test_two_seconds_of_p99_is_not_under_two_seconds() -> None:
    assert p99_verdict({"p99_ms": 2000}).met is False


def test_targets_not_measured_are_neither_met_nor_missed() -> None:
    skipped = {"instances_per_s": 180.7, "p99_ms": None, "cpu_ms_per_instance": 9.1, "orthanc_exchange_per_s": None}
    verdicts = run_verdicts(skipped)
    assert targets_met(verdicts) == {"rate_vs_orthanc": None, "cpu_vs_orthanc": None, "p99": None}
    assert verdicts[0].line == "rate: 180.7/s; no Orthanc figure to compare it with"
    assert verdicts[2].line == "p99 accepted → stored: no receipts to measure it"


def test_a_series_compares_its_last_run_with_its_first() -> None:
    held = series_verdict([239.5, 254.2, 246.9, 242.2, 242.4])
    assert held.met is True
    assert held.line == "back to back: run 5 at 242.4/s is 101% of run 1's 239.5/s (target ≥ 90%: met)"
    fell = series_verdict([100.0, 95.0, 89.9])
    assert fell.met is False
    # 89.9% is not shown as the 90% it missed.
    assert fell.line.endswith("is 89% of run 1's 100.0/s (target ≥ 90%: not met)")


def test_a_series_without_two_rates_has_no_verdict() -> None:
    assert series_verdict([120.0]).met is None
    assert series_verdict([0.0, 120.0]).met is None


def test_the_series_json_line_lists_every_run() -> None:
    runs = [
        {"instances_per_s": 128.7, "p99_ms": 1390, "cpu_ms_per_instance": 11.7},
        {"instances_per_s": 128.6, "p99_ms": 1410, "cpu_ms_per_instance": 12.5},
    ]
    assert series_line(runs) == {
        "runs": 2,
        "instances_per_s": [128.7, 128.6],
        "p99_ms": [1390, 1410],
        "cpu_ms_per_instance": [11.7, 12.5],
        "last_vs_first": 0.999,
        "targets_met": {"last_vs_first": True},
    }


def test_a_series_run_echoes_its_lines_and_hands_back_its_last_line_as_json(capsys: pytest.CaptureFixture[str]) -> None:
    script = "print('sending 2000 instances'); print('{\"instances_per_s\": 180.7}')"
    assert run_once([sys.executable, "-c", script]) == (0, {"instances_per_s": 180.7})
    assert capsys.readouterr().out == '  sending 2000 instances\n  {"instances_per_s": 180.7}\n'


def test_a_series_run_that_ends_without_its_json_line_gives_none() -> None:
    script = "import sys; print('timed out: 12 of 2000 files arrived'); sys.exit(1)"
    assert run_once([sys.executable, "-c", script]) == (1, None)
