"""CPU time of processes from /proc (user + system, the process and its waited-for children), for the
benchmarks' CPU-per-instance figures."""

from __future__ import annotations

import os
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


def tree_cpu_seconds(pid: int) -> float:
    """CPU of `pid` and of every live descendant (PostgreSQL runs a process per connection)."""
    total = cpu_seconds(pid)
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    stack = list(children.get(pid, []))
    while stack:
        child = stack.pop()
        total += cpu_seconds(child)
        stack.extend(children.get(child, []))
    return total


def sample(pids: dict[str, tuple[int, bool]]) -> dict[str, float]:
    """CPU seconds of each named process now; `(pid, True)` counts its whole process tree."""
    return {name: tree_cpu_seconds(pid) if tree else cpu_seconds(pid) for name, (pid, tree) in pids.items()}
