"""What the benchmarks and `make chaos` read of processes from /proc: CPU time (user + system, the
process and its waited-for children) for the CPU-per-instance figures, the process tree, and the peak
resident set (VmHWM)."""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime + cutime + cstime of `pid`; 0.0 when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # After the command name: state is field 3, utime 14, stime 15, cutime 16, cstime 17 (1-based).
    return sum(int(v) for v in fields[11:15]) / _TICKS


def parents() -> dict[int, list[int]]:
    """Parent PID -> child PIDs of every live process."""
    children: dict[int, list[int]] = defaultdict(list)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children[ppid].append(int(entry.name))
    return children


def descendants(pid: int, children: dict[int, list[int]]) -> list[int]:
    found, stack = [], list(children.get(pid, []))
    while stack:
        child = stack.pop()
        found.append(child)
        stack.extend(children.get(child, []))
    return found


def tree_cpu_seconds(pid: int) -> float:
    """CPU of `pid` and of every live descendant (PostgreSQL runs a process per connection)."""
    return cpu_seconds(pid) + sum(cpu_seconds(child) for child in descendants(pid, parents()))


def rss_peak_mb(pid: int) -> float:
    """VmHWM of `pid` in MiB; 0.0 when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0.0


def sample(pids: dict[str, tuple[int, bool]]) -> dict[str, float]:
    """CPU seconds of each named process now; `(pid, True)` counts its whole process tree."""
    return {name: tree_cpu_seconds(pid) if tree else cpu_seconds(pid) for name, (pid, tree) in pids.items()}


def machine_cpu_seconds() -> dict[str, float]:
    """The whole machine's CPU time since boot, summed over its CPUs (/proc/stat's `cpu` line): `busy`
    (user, nice, system, irq, softirq), `iowait`, `idle` and `steal` (time the hypervisor ran something
    else while a CPU of ours wanted to run)."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("cpu "):
            return machine_cpu_from_stat_line(line)
    return {}


def machine_cpu_from_stat_line(line: str) -> dict[str, float]:
    """`cpu  user nice system idle iowait irq softirq steal ...` in clock ticks -> seconds by kind."""
    ticks = [int(v) for v in line.split()[1:9]]
    user, nice, system, idle, iowait, irq, softirq, steal = ticks + [0] * (8 - len(ticks))
    return {
        "busy": (user + nice + system + irq + softirq) / _TICKS,
        "iowait": iowait / _TICKS,
        "idle": idle / _TICKS,
        "steal": steal / _TICKS,
    }
