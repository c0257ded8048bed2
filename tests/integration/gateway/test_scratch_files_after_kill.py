"""A gateway killed while it held a large object on disk left that file (up to 1 GiB) in its state
folder for ever: nothing else deletes it. The next gateway to start there removes it, and leaves the
files of a gateway still running."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from services.gateway.fetch import Fetcher

pytestmark = pytest.mark.integration
REPOSITORY = Path(__file__).resolve().parents[3]

# Makes a temp file as a fetch does, says its name, then waits to be killed.
_HOLDER = """
import os, sys, time
from pathlib import Path
from services.gateway.scratch_files import new_scratch_file
fd, path = new_scratch_file(Path(sys.argv[1]))
os.write(fd, b"x" * 100_000)
print(path, flush=True)
time.sleep(600)
"""


def _holder(folder: Path) -> tuple[subprocess.Popen[str], Path]:
    process = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(folder)], stdout=subprocess.PIPE, text=True, cwd=REPOSITORY
    )
    assert process.stdout is not None
    return process, Path(process.stdout.readline().strip())


def test_a_starting_gateway_removes_a_killed_ones_temp_files_and_keeps_a_running_ones(tmp_path: Path) -> None:
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    killed, left_behind = _holder(incoming)
    running, in_use = _holder(incoming)
    try:
        killed.send_signal(signal.SIGKILL)
        killed.wait(10)
        assert left_behind.exists() and in_use.exists()

        Fetcher("key", incoming).close()

        assert not left_behind.exists()
        assert in_use.exists()
    finally:
        running.kill()
        running.wait(10)
