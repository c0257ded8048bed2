"""`python -m tools.devstack.supervise NAME [--nice N] -- ARGV...`: runs one service and starts it again
when it dies, so a crashed or killed service does not stay down in the devstack (issue 9: "the
devstack restarts a service that dies"). `--nice N`: the service runs at that niceness (the supervisor
itself stays at its own).

The supervisor's PID is the one `make stop` knows; SIGTERM/SIGINT to it are passed to the service,
which then finishes its batch and exits, and the supervisor exits with it. Any other exit of the
service (a crash, SIGKILL, an exit status the service chose) is followed by a restart after a delay
that doubles up to `MAX_DELAY_S` and falls back to `BASE_DELAY_S` once the service has run for
`STABLE_S` (a service that keeps dying at start-up is not restarted in a tight loop).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence

from tools.devstack.processes import die_with_parent_hook

BASE_DELAY_S = 1.0
MAX_DELAY_S = 30.0
STABLE_S = 60.0


def next_delay(previous_s: float, ran_for_s: float) -> float:
    """The wait before the next start (pure)."""
    if ran_for_s >= STABLE_S:
        return BASE_DELAY_S
    return min(MAX_DELAY_S, max(BASE_DELAY_S, previous_s * 2))


def spawn_at(niceness: int) -> Callable[[Sequence[str]], subprocess.Popen[bytes]]:
    """Start a service at `niceness` (nice(2) in the child, before it runs anything; 0: as this one),
    asked to stop (SIGTERM) when the supervisor dies, however it dies: a service left running without
    its supervisor is one nothing stops or restarts."""
    stop_with_supervisor = die_with_parent_hook(signal.SIGTERM)

    def prepare_child() -> None:
        if stop_with_supervisor is not None:
            stop_with_supervisor()
        if niceness != 0:
            os.nice(niceness)

    return lambda argv: subprocess.Popen(list(argv), preexec_fn=prepare_child)


def supervise(
    name: str,
    argv: Sequence[str],
    stop: threading.Event,
    spawn: Callable[[Sequence[str]], subprocess.Popen[bytes]] = spawn_at(0),
    log: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True),
) -> int:
    """Run `argv` until `stop` is set; returns the last exit status of the service."""
    delay = BASE_DELAY_S / 2
    while True:
        started = time.monotonic()
        child = spawn(argv)
        while child.poll() is None:
            if stop.wait(0.2):
                child.send_signal(signal.SIGTERM)
                return child.wait()
        status = child.returncode
        if stop.is_set():
            return status
        delay = next_delay(delay, time.monotonic() - started)
        event = {"msg": "supervisor: service exited; restarting", "service": name, "status": status, "seconds": delay}
        log(json.dumps(event))
        if stop.wait(delay):
            return status


USAGE = "usage: python -m tools.devstack.supervise NAME [--nice N] -- ARGV..."


def parse_args(args: Sequence[str]) -> tuple[str, int, list[str]]:
    """(name, niceness, the service's argv); raises ValueError with the usage (pure)."""
    if "--" not in args:
        raise ValueError(USAGE)
    split = list(args).index("--")
    head, argv = list(args[:split]), list(args[split + 1 :])
    if not argv:
        raise ValueError(USAGE)
    if len(head) == 3 and head[1] == "--nice" and head[2].lstrip("-").isdigit():
        return head[0], int(head[2]), argv
    if len(head) != 1:
        raise ValueError(USAGE)
    return head[0], 0, argv


def main(args: Sequence[str]) -> int:
    try:
        name, niceness, argv = parse_args(args)
    except ValueError as error:
        print(error, file=sys.stderr)
        return 2
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda _signum, _frame: stop.set())
    return supervise(name, argv, stop, spawn=spawn_at(niceness))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
