"""The gateway's temp files (objects too large to hold, and copies a target needs on disk), named by
the host and process that made them, so that a gateway starting up can delete what a killed one left
behind (up to 1 GiB each) without touching the files of another gateway sharing the folder: only
files of this host whose process is gone are removed. A process is its id and its start time: in a
container the gateway is process 1 on every start, and the id alone took a killed run's files for its
own. Files of another host (a pod rescheduled under a new name) are left to the folder's owner."""

from __future__ import annotations

import functools
import logging
import os
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

_PREFIX = "fetch-"
_SUFFIX = ".dcm"

# (process id, start time in clock ticks since boot) -> whether that process still runs
Alive = Callable[[int, int], bool]


def _host_prefix() -> str:
    return f"{_PREFIX}{socket.gethostname()}-"


def _start_time(pid: int | str = "self") -> int | None:
    """The process's start time (/proc/<pid>/stat, field 22), None when it is not running (or unreadable)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
        return int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def _process_token() -> str:
    return _token_of(os.getpid())


@functools.cache
def _token_of(pid: int) -> str:
    """This process's token, read from /proc once (per process id: a forked child reads its own), not for
    every temp file it names."""
    return f"{pid}.{_start_time() or 0}"


def new_scratch_file(folder: Path | None, suffix: str = _SUFFIX) -> tuple[int, Path]:
    """An open descriptor and the path of a new, empty temp file in `folder` (None: the temp folder)."""
    fd, name = tempfile.mkstemp(dir=folder, prefix=f"{_host_prefix()}{_process_token()}-", suffix=suffix)
    return fd, Path(name)


def _running(pid: int, started: int) -> bool:
    return _start_time(pid) == started


def abandoned(names: list[str], host_prefix: str, alive: Alive, me: str, suffix: str = _SUFFIX) -> list[str]:
    """Those of `names` made on this host by a process no longer running (pure, for the tests); `me` is
    this process's token, whose files are never abandoned."""
    gone = []
    for name in names:
        if not (name.startswith(host_prefix) and name.endswith(suffix)):
            continue
        token = name[len(host_prefix) :].split("-", 1)[0]
        pid_text, _, start_text = token.partition(".")
        if token == me or not (pid_text.isdigit() and start_text.isdigit()):
            continue  # ours, or not named as this version names them: not provably abandoned
        if not alive(int(pid_text), int(start_text)):
            gone.append(name)
    return gone


def remove_abandoned(folder: Path, suffix: str = _SUFFIX) -> int:
    """Delete the temp files in `folder` whose makers are gone; how many bytes that freed."""
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return 0
    freed = 0
    for name in abandoned(names, _host_prefix(), _running, _process_token(), suffix):
        path = folder / name
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            continue  # another gateway starting at the same moment removed it
        freed += size
    if freed:
        log.info("temp files of a stopped gateway removed", extra={"bytes": freed})
    return freed
