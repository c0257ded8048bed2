"""`make profile`'s broker part against a real JVM: async-profiler, fetched by Maven and loaded by jcmd,
writes collapsed stacks that name the method the JVM was busy in, and a flame graph."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from tools.broker_profile import NotProfiled, ensure_library, start, stop

BUSY = """
public class Busy {
    static long spin(long n) { long x = 0; for (long i = 0; i < n; i++) { x += i ^ (x >>> 3); } return x; }
    public static void main(String[] args) throws Exception {
        System.out.println("ready"); System.out.flush();
        long sink = 0; while (true) { sink += spin(5_000_000L); if (sink == 42) System.out.println(sink); }
    }
}
"""


def test_a_running_jvm_is_profiled_without_a_restart(tmp_path: Path) -> None:
    try:
        library = ensure_library()
    except NotProfiled as why:
        pytest.skip(f"async-profiler unavailable here: {why}")
    source = tmp_path / "Busy.java"
    source.write_text(BUSY)
    jvm = subprocess.Popen(["java", str(source)], stdout=subprocess.PIPE, text=True)
    try:
        assert jvm.stdout is not None and jvm.stdout.readline().strip() == "ready"
        start(jvm.pid, library)
        time.sleep(1.5)
        written = stop(jvm.pid, library, tmp_path)
    finally:
        jvm.kill()
        jvm.wait()
    assert sorted(p.name for p in written) == ["kafka.html", "kafka.txt"]
    stacks = (tmp_path / "kafka.txt").read_text()
    assert "Busy.spin" in stacks
    assert "<html" in (tmp_path / "kafka.html").read_text().lower()
