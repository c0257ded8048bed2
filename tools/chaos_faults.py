"""The faults `make chaos` injects into the running devstack, each by PID:

- SIGKILL of one service's own process; its supervisor (tools/devstack/supervise.py) starts it again,
  and the fault is over when the new process answers its gRPC health check;
- SIGKILL of the Kafka broker, started again here (`tools.devstack.cli.up` starts what is not running);
- a freeze of the database: SIGSTOP to FerretDB and to PostgreSQL with every backend, SIGCONT after;
- a crash of the database: SIGKILL of FerretDB and of PostgreSQL with every backend, both started again
  here; PostgreSQL recovers from its write-ahead log (a crash of the server, not of the machine: the
  devstack runs it without fsync, tools/devstack/postgres.py);
- the partner's PACS down: its storescp stopped, and started again on the same port after.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable

from tools.chaos_procs import Watcher
from tools.devstack import Layout, Ports, registered
from tools.devstack.cli import up
from tools.devstack.processes import port_is_free
from tools.proc_cpu import descendants, parents
from tools.services_stack import SERVICES, wait_serving


def _wait(predicate: Callable[[], bool], timeout_s: float, interval_s: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval_s)
    return True


def kill_service(name: str, watcher: Watcher, timeout_s: float = 120.0) -> str:
    """SIGKILL the service's process; returns once its supervisor's new process is SERVING."""
    pid = watcher.pid(name)
    if pid is None:
        raise RuntimeError(f"{name} has no running process to kill")
    watcher.expect_exit(name)
    os.kill(pid, signal.SIGKILL)
    restarted = _wait(lambda: watcher.pid(name) not in (None, pid), timeout_s)
    serving = restarted and wait_serving(f"127.0.0.1:{SERVICES[name].grpc}", timeout_s)
    return f"pid {pid} killed; " + ("restarted and serving" if serving else "NOT serving again")


def kill_broker(layout: Layout, ports: Ports, watcher: Watcher) -> str:
    """SIGKILL the broker, then start it again on the same data (the devstack's `up`)."""
    kafka = next((p for p in registered(layout.run) if p.name == "kafka"), None)
    if kafka is None:
        raise RuntimeError("no Kafka broker is registered in the devstack")
    watcher.expect_exit("kafka")
    os.kill(kafka.pid, signal.SIGKILL)
    # A JVM's leader thread shows as a zombie while its other threads still hold the listeners.
    listeners = (ports.kafka, ports.kafka_controller, ports.kafka_partner)
    _wait(lambda: not kafka.alive() and all(port_is_free(p) for p in listeners), 60)
    up(layout, ports)
    return f"pid {kafka.pid} killed; started again"


def database_pids(layout: Layout) -> list[int]:
    """FerretDB, and PostgreSQL's postmaster with every backend and auxiliary process."""
    children = parents()
    pids = []
    for proc in registered(layout.run):
        if proc.name == "ferretdb":
            pids.append(proc.pid)
        elif proc.name == "postgres":
            pids.extend([proc.pid, *descendants(proc.pid, children)])
    return pids


def kill_database(layout: Layout, ports: Ports, watcher: Watcher) -> str:
    """SIGKILL FerretDB and every PostgreSQL process at once, then start both again on the same data."""
    pids = database_pids(layout)
    if not pids:
        raise RuntimeError("no FerretDB/PostgreSQL processes are registered in the devstack")
    for name in ("ferretdb", "postgres"):
        watcher.expect_exit(name)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    # PostgreSQL will not start while a process of the old postmaster still holds its shared memory, or
    # while the PID in its lock file is there at all (a zombie too).
    listeners = (ports.mongo, ports.postgres)
    if not _wait(lambda: all(_gone(pid) for pid in pids) and all(port_is_free(p) for p in listeners), 60):
        raise RuntimeError("the killed database processes did not go away within 60 s")
    up(layout, ports)
    return f"{len(pids)} processes killed; started again"


def _gone(pid: int) -> bool:
    """No process `pid`, not even a zombie; reaps it when it was a child of this process (a devstack the
    chaos tool started itself)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    return not os.path.exists(f"/proc/{pid}")


def freeze_database(layout: Layout, seconds: float, tick: Callable[[float], None] = lambda _: None) -> str:
    """SIGSTOP the database processes for `seconds`, then SIGCONT them (also when interrupted)."""
    pids = database_pids(layout)
    if not pids:
        raise RuntimeError("no FerretDB/PostgreSQL processes are registered in the devstack")
    stopped = []
    try:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
                stopped.append(pid)
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            tick(left)
            time.sleep(min(1.0, left))
    finally:
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
    return f"{len(stopped)} processes frozen for {seconds:.0f} s"
