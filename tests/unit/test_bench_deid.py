"""`make bench-deid` machinery on a few instances, imx only (the other tools need their own venvs)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from tools.bench_deid import ToolResult, main, on_tmpfs, run_tool, summary


def test_the_imx_driver_times_every_file_on_one_cpu(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    cpu = min(os.sched_getaffinity(0))
    outputs = tmp_path / "out"
    outputs.mkdir()
    argv = ["--instances", "3", "--tools", "imx", "--cpu", str(cpu), "--data", str(tmp_path), "--outputs", str(outputs)]
    assert main(argv) == 0
    figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert figures["instances"] == 3 and figures["imx_per_s"] > 0 and figures["dicognito_per_s"] is None
    assert figures["outputs"] == ("tmpfs" if on_tmpfs(outputs) else "disk")
    assert not list(outputs.iterdir()), "outputs cleaned up"
    (corpus,) = tmp_path.glob("ct-3-*")  # the generated instances, in a folder named after their generator
    files = sorted(corpus.glob("*.dcm"))
    result = run_tool("imx", Path(sys.executable), files, cpu, "research", tmp_path)
    assert (result.instances, result.failed, result.cpus) == (3, 0, (cpu,))
    assert sorted(p.name for p in tmp_path.iterdir()) == [corpus.name, "out"]  # outputs cleaned up


def test_the_summary_compares_imx_with_each_tool() -> None:
    def result(tool: str, rate: float) -> ToolResult:
        return ToolResult(tool, "1", 10, 0, 10 / rate, rate, (0,))

    figures = summary({"imx": result("imx", 300), "dicognito": result("dicognito", 100)}, 10, 0, "basic")
    assert (figures["imx_per_s"], figures["dicognito_per_s"], figures["deid_per_s"]) == (300, 100, None)
    assert (figures["ratio_vs_dicognito"], figures["ratio_vs_deid"], figures["instances"]) == (3.0, None, 10)


def test_ram_and_disk_are_told_apart() -> None:
    assert on_tmpfs(Path("/proc")) is False
    if Path("/dev/shm").is_dir():
        assert on_tmpfs(Path("/dev/shm")) is True
    assert on_tmpfs(Path(__file__)) is False or Path(__file__).resolve().as_posix().startswith("/dev/shm")
