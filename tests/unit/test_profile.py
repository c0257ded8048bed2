"""`make profile` finds the bench's gateway among the bench's children and records with py-spy."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from tools.profile import PY_SPY, find_gateway, py_spy_command


def test_the_bench_gateway_is_the_python_child_running_gateway() -> None:
    sleeper = [sys.executable, "-c", "import time; time.sleep(30)"]
    other = subprocess.Popen([*sleeper, "something", "else"])
    gateway = subprocess.Popen([*sleeper, "gateway", "run", "--partner", "bench-partner"])
    try:
        deadline = time.monotonic() + 10
        while (found := find_gateway(os.getpid())) is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert found == gateway.pid
    finally:
        for proc in (other, gateway):
            proc.kill()
            proc.wait()


def test_py_spy_is_installed_beside_the_interpreter() -> None:
    done = subprocess.run([str(PY_SPY), "--version"], capture_output=True, text=True, check=True)
    assert done.stdout.startswith("py-spy ")


def test_gil_sampling_is_asked_of_py_spy_only_when_wanted(tmp_path: Path) -> None:
    out = tmp_path / "ingest.txt"

    plain = py_spy_command(4242, 25, "raw", out)
    gil = py_spy_command(4242, 25, "raw", out, gil=True)

    assert "--gil" not in plain
    assert [a for a in gil if a != "--gil"] == plain
    assert plain[plain.index("--pid") + 1] == "4242" and plain[plain.index("--output") + 1] == str(out)
