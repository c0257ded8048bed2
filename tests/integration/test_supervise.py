"""The devstack's supervisor (tools/devstack/supervise.py) with real processes: a service that is
SIGKILLed is started again, a stop request reaches the service and ends both, and restarts back off."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tools import devstack
from tools.devstack.processes import is_running
from tools.devstack.supervise import BASE_DELAY_S, MAX_DELAY_S, STABLE_S, next_delay

ROOT = Path(__file__).resolve().parents[2]

SERVICE = """
import os, signal, sys, time
from pathlib import Path
Path(sys.argv[1], f"{os.getpid()}.pid").write_text("")
signal.signal(signal.SIGTERM, lambda *_: (Path(sys.argv[1], "stopped").write_text(""), sys.exit(0)))
while True:
    time.sleep(0.1)
"""


def _pids(folder: Path) -> list[int]:
    return sorted(int(p.stem) for p in folder.glob("*.pid"))


def _wait(predicate, timeout_s: float = 15.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def test_a_killed_service_is_started_again_and_a_stop_ends_both(tmp_path: Path) -> None:
    supervisor = subprocess.Popen(
        [sys.executable, "-m", "tools.devstack.supervise", "svc", "--", sys.executable, "-c", SERVICE, str(tmp_path)],
        cwd=ROOT,
        stderr=subprocess.PIPE,
    )
    try:
        assert _wait(lambda: len(_pids(tmp_path)) == 1), "the service started"
        first = _pids(tmp_path)[0]
        os.kill(first, signal.SIGKILL)
        assert _wait(lambda: len(_pids(tmp_path)) == 2), "the killed service was started again"
        supervisor.send_signal(signal.SIGTERM)
        assert supervisor.wait(timeout=15) == 0
        assert (tmp_path / "stopped").exists(), "the stop request reached the service"
        assert len(_pids(tmp_path)) == 2, "and it was not started again"
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
    stderr = supervisor.stderr.read().decode() if supervisor.stderr else ""
    assert '"service": "svc"' in stderr and '"status": -9' in stderr


def test_restarts_back_off_and_reset_once_the_service_has_stayed_up() -> None:
    assert next_delay(BASE_DELAY_S / 2, ran_for_s=0.1) == BASE_DELAY_S
    assert next_delay(4.0, ran_for_s=0.1) == 8.0
    assert next_delay(MAX_DELAY_S, ran_for_s=0.1) == MAX_DELAY_S
    assert next_delay(MAX_DELAY_S, ran_for_s=STABLE_S) == BASE_DELAY_S


NICENESS_PROBE = """
import os, sys, time
from pathlib import Path
Path(sys.argv[1], "niceness").write_text(str(os.nice(0)))
time.sleep(60)
"""


def test_a_service_runs_at_the_niceness_it_is_given_and_the_supervisor_at_its_own(tmp_path: Path) -> None:
    service = [sys.executable, "-c", NICENESS_PROBE, str(tmp_path)]
    supervisor = subprocess.Popen(
        [sys.executable, "-m", "tools.devstack.supervise", "svc", "--nice", "7", "--", *service], cwd=ROOT
    )
    try:
        assert _wait(lambda: (tmp_path / "niceness").exists() and (tmp_path / "niceness").read_text() != "")
        assert int((tmp_path / "niceness").read_text()) == os.nice(0) + 7
        assert os.getpriority(os.PRIO_PROCESS, supervisor.pid) == os.nice(0)
    finally:
        supervisor.send_signal(signal.SIGTERM)
        supervisor.wait(timeout=15)


def test_the_supervisor_refuses_arguments_it_does_not_know() -> None:
    for args in (["svc"], ["svc", "--nice", "x", "--", "true"], ["svc", "--"], ["svc", "extra", "--", "true"]):
        done = subprocess.run(
            [sys.executable, "-m", "tools.devstack.supervise", *args], cwd=ROOT, capture_output=True, text=True
        )
        assert done.returncode == 2 and "usage:" in done.stderr, args


def _gone(pid: int) -> bool:
    """No such process, or only its zombie (an orphan's is reaped by whoever adopted it, maybe late)."""
    return not is_running(pid)


def test_a_supervisor_killed_outright_stops_its_service(tmp_path: Path) -> None:
    supervisor = subprocess.Popen(
        [sys.executable, "-m", "tools.devstack.supervise", "svc", "--", sys.executable, "-c", SERVICE, str(tmp_path)],
        cwd=ROOT,
    )
    try:
        assert _wait(lambda: len(_pids(tmp_path)) == 1), "the service started"
        supervisor.kill()
        supervisor.wait(timeout=5)
        assert _wait(lambda: (tmp_path / "stopped").exists()), "the service was asked to stop"
        assert _wait(lambda: _gone(_pids(tmp_path)[0])), "and it did"
    finally:
        for pid in _pids(tmp_path):
            if not _gone(pid):
                os.kill(pid, signal.SIGKILL)


DEAF_SERVICE = """
import os, signal, sys, time
from pathlib import Path
signal.signal(signal.SIGTERM, signal.SIG_IGN)
Path(sys.argv[1], f"{os.getpid()}.pid").write_text("")
time.sleep(60)
"""


def test_make_stop_kills_a_service_that_will_not_stop_together_with_its_supervisor(tmp_path: Path) -> None:
    """`make stop` SIGKILLs a supervisor whose service outlasts its patience; the service goes too."""
    service = [sys.executable, "-c", DEAF_SERVICE, str(tmp_path)]
    run_dir = tmp_path / "run"
    devstack.start_process(
        "svc",
        [sys.executable, "-m", "tools.devstack.supervise", "svc", "--", *service],
        tmp_path / "svc.log",
        cwd=ROOT,
        run_dir=run_dir,
        stop_patience_s=1.0,
    )
    try:
        assert _wait(lambda: len(_pids(tmp_path)) == 1), "the service started"
        started = time.monotonic()
        [supervisor] = devstack.stop_all(run_dir)  # `make stop`: the patience comes from the pid file
        assert supervisor.killed and time.monotonic() - started < 10
        assert _wait(lambda: _gone(_pids(tmp_path)[0]), timeout_s=5.0), "the service did not outlive its supervisor"
    finally:
        for pid in _pids(tmp_path):
            if not _gone(pid):
                os.kill(pid, signal.SIGKILL)
