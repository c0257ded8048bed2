"""`make bench-deid`: de-identification throughput on one core, imx against dicognito and pydicom's deid.

The same N synthetic CT 512x512 instances (cached under ~/.cache/imx/bench, as `make bench` does) go through
each tool in its own process pinned to one CPU: read file -> de-identify -> write file (imx's leak
check runs inside `deidentify`). dicognito and deid are not project dependencies: each is installed
only in its own benchmark virtual environment (var/bench-venv/<tool>, made once with `python -m
venv` + pip, pinned below). Only the loop is timed (tools/bench_deid_driver.py). The last line
printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tools.bench_corpus import bench_data, default_root
from tools.bench_venv import ensure_venv
from tools.services_stack import PROCESS_ENV

ROOT = Path(__file__).resolve().parent.parent
DRIVER = ROOT / "tools" / "bench_deid_driver.py"
# The tools compared, pinned so figures from two runs compare; pydicom as the project's.
REQUIREMENTS: dict[str, tuple[str, ...]] = {
    "dicognito": ("dicognito==0.19.0", "pydicom==3.0.2"),
    "deid": ("deid==0.4.13", "pydicom==3.0.2"),
}
TOOLS = ("imx", *REQUIREMENTS)
# The same environment for every tool. Nothing may use a second core behind the benchmark's back, and
# every process gets the allocator settings the services run with (tools/services_stack.py): half-
# megabyte buffers then come from the heap instead of fresh mmap'd pages (measured here: about 1.5x
# for imx; dicognito 155/s with them, 163/s without, one run each, within its noise).
SAME_FOR_EVERY_TOOL = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **PROCESS_ENV}
# Outputs go to RAM (tmpfs) when the machine has it: the disk's write-back rate (about 1 GB per tool
# here) is no property of a de-identifier, and it caps every tool at the same rate. --outputs chooses.
RAM_DISK = Path("/dev/shm")


class BenchError(RuntimeError):
    pass


@dataclass(frozen=True)
class ToolResult:
    tool: str
    version: str
    instances: int
    failed: int
    seconds: float
    per_s: float
    cpus: tuple[int, ...]


def run_tool(tool: str, python: Path, files: list[Path], cpu: int, profile: str, scratch: Path) -> ToolResult:
    """One pinned process over every file; its outputs are deleted afterwards."""
    work = Path(tempfile.mkdtemp(prefix=f"{tool}-", dir=scratch))
    try:
        listing = work / "files.txt"
        listing.write_text("\n".join(str(f) for f in files) + "\n")
        out = work / "out"
        out.mkdir()
        env = {**os.environ, **SAME_FOR_EVERY_TOOL}
        if tool == "imx":
            env["PYTHONPATH"] = str(ROOT)
        command = [str(python), str(DRIVER), "--tool", tool, "--files", str(listing), "--out", str(out)]
        command += ["--cpu", str(cpu), "--profile", profile]
        done = subprocess.run(command, env=env, cwd=work, capture_output=True, text=True)
        if done.returncode != 0:
            raise BenchError(f"{tool} failed ({done.returncode}):\n{done.stderr[-2000:]}")
        result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        return ToolResult(
            tool=tool,
            version=str(result["version"]),
            instances=int(result["instances"]),
            failed=int(result["failed"]),
            seconds=float(result["seconds"]),
            per_s=float(result["per_s"]),
            cpus=tuple(result["cpus"]),
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


def warm_page_cache(files: list[Path]) -> None:
    """Read every input once, so that the first tool does not pay alone for a cold disk cache."""
    for path in files:
        with path.open("rb") as stream:
            while stream.read(1 << 20):
                pass


def default_outputs(data: Path) -> Path:
    return RAM_DISK if RAM_DISK.is_dir() and os.access(RAM_DISK, os.W_OK) else data


def on_tmpfs(path: Path) -> bool:
    """Whether ``path`` is on a RAM file system (the longest matching mount point in /proc/mounts)."""
    try:
        mounts = [line.split()[1:3] for line in Path("/proc/mounts").read_text().splitlines()]
    except OSError:
        return False
    resolved = str(path.resolve())
    best = max(
        (m for m in mounts if resolved == m[0] or resolved.startswith(m[0].rstrip("/") + "/")),
        key=lambda m: len(m[0]),
        default=None,
    )
    return best is not None and best[1] in ("tmpfs", "ramfs")


def summary(results: dict[str, ToolResult], instances: int, cpu: int, profile: str) -> dict[str, Any]:
    rate = {tool: r.per_s for tool, r in results.items()}
    figures: dict[str, Any] = {f"{tool}_per_s": rate.get(tool) for tool in TOOLS}
    for other in REQUIREMENTS:
        imx, theirs = rate.get("imx"), rate.get(other)
        figures[f"ratio_vs_{other}"] = round(imx / theirs, 2) if imx and theirs else None
    figures.update(
        instances=instances,
        cpu=cpu,
        # Other processes on the machine share the core: a loaded machine gives lower figures.
        loadavg_1m=round(os.getloadavg()[0], 2),
        profile=profile,
        failed={tool: r.failed for tool, r in results.items()},
        versions={tool: r.version for tool, r in results.items()},
    )
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--instances", type=int, default=int(os.environ.get("IMX_BENCH_INSTANCES", "2000")))
    parser.add_argument("--cpu", type=int, default=min(os.sched_getaffinity(0)), help="the one CPU every tool runs on")
    parser.add_argument("--profile", default="basic", help="imx built-in profile")
    parser.add_argument("--tools", default=",".join(TOOLS), help=f"comma separated subset of {','.join(TOOLS)}")
    parser.add_argument("--data", type=Path, default=default_root(), help="cache of the generated instances")
    parser.add_argument("--venvs", type=Path, default=ROOT / "var" / "bench-venv", help="the tools' environments")
    parser.add_argument(
        "--outputs",
        type=Path,
        default=None,
        help=f"where the tools write (default: {RAM_DISK} if writable, else --data)",
    )
    args = parser.parse_args(argv)
    outputs: Path = (args.outputs or default_outputs(args.data)).resolve()
    tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    unknown = set(tools) - set(TOOLS)
    if unknown or not tools:
        parser.error(f"unknown tool(s) {', '.join(sorted(unknown))}; choose from {', '.join(TOOLS)}")

    print(f"preparing {args.instances} CT instances (cached under {args.data})", flush=True)
    files = bench_data(args.data.resolve(), args.instances)
    size_kb = sum(f.stat().st_size for f in files) / len(files) / 1024
    warm_page_cache(files)
    outputs_kind = "tmpfs" if on_tmpfs(outputs) else "disk"
    print(f"outputs written under {outputs} ({outputs_kind})", flush=True)
    pythons = {
        tool: Path(sys.executable) if tool == "imx" else ensure_venv(args.venvs, tool, REQUIREMENTS[tool])
        for tool in tools
    }
    results: dict[str, ToolResult] = {}
    for tool in tools:
        print(f"{tool}: {len(files)} instances on CPU {args.cpu}...", flush=True)
        results[tool] = result = run_tool(tool, pythons[tool], files, args.cpu, args.profile, outputs)
        print(
            f"{tool:<10} {result.version:<10} {result.per_s:>8.1f} instances/s  "
            f"({result.seconds:.1f} s, {result.failed} failed, CPUs {list(result.cpus)})",
            flush=True,
        )
    figures = summary(results, len(files), args.cpu, args.profile)
    figures["outputs"] = outputs_kind
    print(f"{len(files)} CT instances of {size_kb:.0f} KB; imx profile {args.profile!r}; one core each")
    for other in REQUIREMENTS:
        if figures[f"ratio_vs_{other}"] is not None:
            print(f"imx / {other}: {figures[f'ratio_vs_{other}']:.2f}x")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
