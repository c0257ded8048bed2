"""`make bench-series`: `make bench` several times back to back (five by default) without cleaning in
between, issue 10's check that the rate holds as `var/` fills: the last run's rate at least 90% of the
first's. Each run's output passes through as it comes, indented; then a line per run, the verdict,
and one JSON object last.

For the issue's procedure run `make clean` first, so the first run starts on an empty `var/`; without
it the series starts from whatever `var/` holds. Orthanc is left out (`--skip-orthanc`): the series
compares imx with itself. Arguments after `--` go to every run (`tools/bench.py --help`).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from tools.bench_targets import series_line, series_rates, series_verdict


def parse_args() -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="runs back to back (the issue's check: five)")
    parser.add_argument("bench_args", nargs="*", help="passed to every run, after --")
    args = parser.parse_args()
    if args.runs < 2:
        parser.error("--runs must be at least 2: the check compares the last run with the first")
    return args, ["--skip-orthanc", *args.bench_args]


def bench_command(bench_args: list[str]) -> list[str]:
    return [sys.executable, "-m", "tools.bench", *bench_args]


def run_once(command: list[str]) -> tuple[int, dict[str, object] | None]:
    """One run, its lines echoed as they come, indented: (exit status, its last line as JSON, or None)."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, bufsize=1)
    assert process.stdout is not None
    last = ""
    for line in process.stdout:
        print(f"  {line}", end="", flush=True)
        last = line
    status = process.wait()
    try:
        result = json.loads(last)
    except json.JSONDecodeError:
        return status, None
    return status, result if isinstance(result, dict) else None


def main() -> int:
    args, bench_args = parse_args()
    results: list[dict[str, object]] = []
    statuses: list[int] = []
    for number in range(1, args.runs + 1):
        print(f"run {number} of {args.runs}: python -m tools.bench {' '.join(bench_args)}", flush=True)
        status, result = run_once(bench_command(bench_args))
        if result is None:
            print(f"run {number} ended (exit status {status}) without its JSON line; the series stops", flush=True)
            return 1
        results.append(result)
        statuses.append(status)
    for number, (result, status) in enumerate(zip(results, statuses, strict=True), 1):
        # tools.bench exits 1 when an instance or its receipt did not arrive in time.
        failure = "" if status == 0 else f" (exit status {status}: not every instance arrived with its receipt)"
        print(
            f"run {number}: {result.get('instances_per_s')}/s, p99 {result.get('p99_ms')} ms, "
            f"{result.get('cpu_ms_per_instance')} ms CPU per instance{failure}",
            flush=True,
        )
    print(series_verdict(series_rates(results)).line, flush=True)
    print(json.dumps(series_line(results)))
    return 1 if any(statuses) else 0


if __name__ == "__main__":
    sys.exit(main())
