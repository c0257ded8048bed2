"""The devstack's processes as `make chaos` sees them, from /proc: each service's own process (the child
of its restarting supervisor, tools/devstack/supervise.py), the broker, PostgreSQL with its backends
and FerretDB. A watcher samples them while the run goes on: the peak resident set of every process
(VmHWM, the kernel's own high-water mark, so a spike between two samples is not missed) and every
process that went away when nobody killed it (a crash; a deliberate kill is announced first)."""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

from tools.devstack import registered
from tools.proc_cpu import descendants, parents, rss_peak_mb
from tools.services_stack import SERVICES

SUPERVISED = tuple(SERVICES)  # ingest, routing, deid, delivery, audit, gateways
TREES = ("postgres",)  # a process per connection: every one counts


def main_pids(run_dir: Path, children: dict[int, list[int]]) -> dict[str, int | None]:
    """The process that does the work, per devstack name: the supervisor's child for a service, the
    registered process for the servers. None: a supervised service between a death and its restart."""
    pids: dict[str, int | None] = {}
    for proc in registered(run_dir):
        if proc.name in SUPERVISED:
            kids = children.get(proc.pid, [])
            pids[proc.name] = max(kids) if kids else None
        else:
            pids[proc.name] = proc.pid
    return pids


class Watcher:
    """Samples the devstack every `interval_s` on a thread of its own until `stop`."""

    def __init__(self, run_dir: Path, interval_s: float = 0.5, extra: dict[str, int] | None = None) -> None:
        self._run_dir, self._interval = run_dir, interval_s
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._expected: dict[str, int] = defaultdict(int)
        self._last: dict[str, int | None] = {}
        self.extra = dict(extra or {})  # other processes to measure (not imx's: not crash-counted)
        self.crashes: dict[str, int] = defaultdict(int)
        self.peak_mb: dict[str, float] = defaultdict(float)
        self.extra_peak_mb: dict[str, float] = defaultdict(float)
        self._thread = threading.Thread(target=self._run, name="chaos-watcher", daemon=True)

    def start(self) -> None:
        self.sample()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.sample()

    def expect_exit(self, name: str) -> None:
        """The next disappearance of `name`'s process is deliberate (a kill the run makes)."""
        with self._lock:
            self._expected[name] += 1

    def pid(self, name: str) -> int | None:
        return main_pids(self._run_dir, parents()).get(name)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.sample()

    def sample(self) -> None:
        children = parents()
        pids = main_pids(self._run_dir, children)
        with self._lock:
            for name, pid in pids.items():
                before = self._last.get(name)
                if before is not None and pid != before:
                    if self._expected[name] > 0:
                        self._expected[name] -= 1
                    else:
                        self.crashes[name] += 1
                if pid is not None or name in SUPERVISED:
                    self._last[name] = pid
            for name, pid in pids.items():
                if pid is None:
                    continue
                group = [pid, *descendants(pid, children)] if name in TREES else [pid]
                for member in group:
                    self.peak_mb[name] = max(self.peak_mb[name], rss_peak_mb(member))
            for name, pid in self.extra.items():
                self.extra_peak_mb[name] = max(self.extra_peak_mb[name], rss_peak_mb(pid))

    def settle(self, names: Iterable[str]) -> None:
        """Forget expectations for `names` that did not come true (a kill that found nothing)."""
        with self._lock:
            for name in names:
                self._expected[name] = 0
