"""Ports and server processes, with pid files so a later command can find and stop them.

A pid file `<run_dir>/<name>.pid` holds the PID on line 1 (so `kill $(head -n1 f)` works) and on
line 2 a JSON object with the kernel start time of the process, its log and its endpoint. The start
time guards against PID reuse: a pid file whose process is gone, or whose PID now belongs to another
program, is stale and removed when read.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import pwd
import random
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

HOST = "127.0.0.1"


class DevstackError(Exception):
    """A failure reported as one line, without a stack trace."""

    exit_code = 1


class StartupError(DevstackError):
    """A server was started but did not become ready."""


class EnvironmentProblem(DevstackError):
    """The machine or the settings prevent a start: fix them and retry."""

    exit_code = 2


# --- ports --------------------------------------------------------------------------------------


# Where a port is picked: just below the kernel's range for the local ends of outgoing connections
# (net.ipv4.ip_local_port_range, 32768-60999 by default). A port the kernel picks for a bind to port 0
# comes from that range, and an outgoing connection (a client of any server on the machine) can be
# given the same port between the pick and the server's own bind, which then fails to start.
PICK_SPAN = 4000
LOCAL_PORT_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def pickable_ports(local_range: Path = LOCAL_PORT_RANGE) -> range:
    """The ports `free_ports` picks from: the `PICK_SPAN` below the outgoing connections' range (its
    Linux default when the file cannot be read), never below 1024; empty when that range starts too
    low to leave any."""
    try:
        low = int(local_range.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    return range(max(1024, low - PICK_SPAN), max(1024, low))


def free_ports(count: int, candidates: range | None = None) -> list[int]:
    """Distinct ports on 127.0.0.1 that nothing listens on right now, in random order from
    `pickable_ports()` (outside the outgoing connections' range); the kernel picks them when that
    leaves too few."""
    pool = list(pickable_ports() if candidates is None else candidates)
    random.shuffle(pool)
    with contextlib.ExitStack() as stack:  # all held open at once: no port is picked twice
        picked: list[int] = []
        for port in pool:
            if len(picked) == count:
                break
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                sock.bind((HOST, port))
            except OSError:  # in use (listening, or a connection's end): closed now, the next
                sock.close()
                continue
            stack.enter_context(sock)
            picked.append(port)
        if len(picked) == count:
            return picked
        socks = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(count)]
        for sock in socks:
            sock.bind((HOST, 0))
        return [int(sock.getsockname()[1]) for sock in socks]


def free_port() -> int:
    return free_ports(1)[0]


def port_is_free(port: int) -> bool:
    # SO_REUSEADDR as the servers use it: a port with only TIME_WAIT leftovers counts as free.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
        return True


def ensure_port_free(port: int, what: str, env_var: str | None = None) -> None:
    if port_is_free(port):
        return
    hint = f"; set {env_var} to a free port" if env_var else ""
    raise EnvironmentProblem(f"port {port} on {HOST} ({what}) is already in use by another program{hint}")


def can_connect(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=timeout):
            return True
    except OSError:
        return False


# --- processes and pid files --------------------------------------------------------------------


STOP_PATIENCE_S = 30.0  # how long `stop` waits after the stop signal before SIGKILL, unless told otherwise


def _start_ticks(pid: int) -> int | None:
    """The kernel start time of a live, non-zombie process, or None if there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # the command name may contain spaces
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def is_running(pid: int) -> bool:
    """Whether `pid` is a live process (a zombie is not: it only waits to be reaped)."""
    return _start_ticks(pid) is not None


@dataclass
class ManagedProcess:
    """A server process started by this module, in this interpreter or an earlier one."""

    name: str
    pid: int
    log_path: Path
    start_ticks: int | None
    endpoint: str = ""
    pid_file: Path | None = None
    log_offset: int = 0
    popen: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    stop_signal: int = signal.SIGTERM
    stop_patience_s: float = STOP_PATIENCE_S  # `stop`'s wait before SIGKILL (a service's grace and then some)
    killed: bool = False  # `stop` had to SIGKILL it

    def alive(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is None
        if self.start_ticks is None:  # no /proc: trust the PID
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                return False
            except PermissionError:  # exists, owned by someone else
                return True
            return True
        return _start_ticks(self.pid) == self.start_ticks

    def log_tail(self, lines: int = 40) -> str:
        """The last lines this run wrote to its log (earlier runs append to the same file)."""
        try:
            with self.log_path.open("rb") as log:
                log.seek(self.log_offset)
                text = log.read().decode(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float | None = None) -> None:
        """`stop_signal` (a clean shutdown, Kafka needs a few seconds), then, after `timeout` (default: its
        `stop_patience_s`), SIGKILL to the process and everything in its process group (`killed` says when
        it came to that).

        The group: a supervisor's service, PostgreSQL's backends. A supervisor SIGKILLed alone would leave
        the service it waits for running, and nothing would know it (`make stop` once did)."""
        patience = self.stop_patience_s if timeout is None else timeout
        for sig, wait in ((self.stop_signal, patience), (signal.SIGKILL, 5.0)):
            if not self.alive():
                break
            self.killed = sig == signal.SIGKILL
            with contextlib.suppress(ProcessLookupError):
                if self.killed and _leads_its_group(self.pid):
                    os.killpg(self.pid, sig)
                else:
                    os.kill(self.pid, sig)
            _wait_until(lambda: not self.alive(), wait)
        if self.pid_file is not None:
            self.pid_file.unlink(missing_ok=True)


def _leads_its_group(pid: int) -> bool:
    """Whether `pid` leads a process group (`start_process` starts each in a session of its own)."""
    try:
        return os.getpgid(pid) == pid
    except ProcessLookupError:
        return False


def _wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
    return True


def await_ready(
    proc: ManagedProcess, probe: Callable[[ManagedProcess], bool], timeout: float, interval: float = 0.25
) -> None:
    """Block until `probe(proc)`; on a crash or timeout stop `proc` and raise with its log tail."""
    deadline = time.monotonic() + timeout
    while not probe(proc):
        if not proc.alive():
            reason = "exited during start-up"
        elif time.monotonic() >= deadline:
            reason = f"did not answer on {proc.endpoint} within {timeout:.0f}s"
        else:
            time.sleep(interval)
            continue
        proc.stop(timeout=5.0)
        raise StartupError(f"{proc.name} {reason}; end of {proc.log_path}:\n{proc.log_tail()}")


def die_with_parent_hook(sig: int) -> Callable[[], None] | None:
    """A pre-exec hook asking Linux to send `sig` to the child when its parent dies (PR_SET_PDEATHSIG),
    so a test run that is killed does not leave servers behind. None where that is unavailable.

    Linux clears this setting when the process changes its user or group ids; subprocess runs the
    hook after it switched to `start_process`'s `user`, so the setting survives that switch."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1
    return lambda: prctl(pr_set_pdeathsig, sig)


def start_process(
    name: str,
    argv: Sequence[str],
    log_path: Path,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    run_dir: Path | None = None,
    endpoint: str = "",
    die_with_parent: bool = False,
    stop_signal: int = signal.SIGTERM,
    stop_patience_s: float = STOP_PATIENCE_S,
    user: str | None = None,
) -> ManagedProcess:
    """Start `argv` in its own session with output appended to `log_path`.

    With `run_dir`, the process is registered in `run_dir/<name>.pid` for `registered`/`stop_all`.
    With `user` (only root may ask), the process runs as that user, its primary group and no other
    group, and its PID is the server's own (no su/runuser in between to forward signals).
    """
    account = pwd.getpwnam(user) if user is not None else None
    if run_dir is not None and (running := read_pid_file(run_dir / f"{name}.pid")) is not None:
        raise EnvironmentProblem(f"{name} is already running (pid {running.pid}); stop it first")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} starting {name}\n".encode())
        offset = log.tell()
        popen = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=None if env is None else dict(env),
            start_new_session=True,  # Ctrl-C in the terminal that ran `make up` leaves it running
            preexec_fn=die_with_parent_hook(stop_signal) if die_with_parent else None,
            user=None if account is None else account.pw_uid,
            group=None if account is None else account.pw_gid,
            extra_groups=None if account is None else [],
        )
    proc = ManagedProcess(
        name, popen.pid, log_path, _start_ticks(popen.pid), endpoint, None, offset, popen, stop_signal, stop_patience_s
    )
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        proc.pid_file = run_dir / f"{name}.pid"
        meta = {
            "start_ticks": proc.start_ticks,
            "log": str(log_path),
            "endpoint": endpoint,
            "stop_signal": stop_signal,
            "stop_patience_s": stop_patience_s,
        }
        proc.pid_file.write_text(f"{proc.pid}\n{json.dumps(meta)}\n")
    return proc


def read_pid_file(pid_file: Path) -> ManagedProcess | None:
    """The live process a pid file records; a stale or unreadable pid file is removed."""
    try:
        first, second = [*pid_file.read_text().splitlines(), "", ""][:2]
        meta = json.loads(second) if second else {}
        proc = ManagedProcess(
            name=pid_file.stem,
            pid=int(first),
            log_path=Path(meta.get("log", "")),
            start_ticks=meta.get("start_ticks"),
            endpoint=meta.get("endpoint", ""),
            pid_file=pid_file,
            stop_signal=int(meta.get("stop_signal", signal.SIGTERM)),
            stop_patience_s=float(meta.get("stop_patience_s", STOP_PATIENCE_S)),
        )
    except (OSError, ValueError, TypeError, AttributeError):
        pid_file.unlink(missing_ok=True)
        return None
    if not proc.alive():
        pid_file.unlink(missing_ok=True)
        return None
    return proc


def registered(run_dir: Path) -> list[ManagedProcess]:
    """Live registered processes, oldest first."""
    pid_files = sorted(run_dir.glob("*.pid"), key=lambda p: p.stat().st_mtime) if run_dir.is_dir() else []
    return [proc for proc in map(read_pid_file, pid_files) if proc is not None]


def stop_all(run_dir: Path, last: Sequence[str] = ()) -> list[ManagedProcess]:
    """Stop every registered process, newest first (services before the servers they use), then those
    named in `last`, in that order: a server started again after the services (`make up` after a broker
    crash) is still stopped after them, not before their last commits. Returns them in the order stopped."""
    procs = registered(run_dir)
    rank = {name: position for position, name in enumerate(last)}
    order = [proc for proc in reversed(procs) if proc.name not in rank]
    order += sorted((proc for proc in procs if proc.name in rank), key=lambda proc: rank[proc.name])
    for proc in order:
        proc.stop()
    return order
