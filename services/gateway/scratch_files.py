"""The gateway's temp files (objects too large to hold, and copies a target needs on disk), named by
the host and process that made them, so that a gateway starting up can delete what a killed one left
behind (up to 1 GiB each) without touching the files of another gateway sharing the folder: only
files of this host whose process is gone are removed. A process id reused since only keeps a file
until the next start after that process ends."""

from __future__ import annotations

import logging
import os
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

_PREFIX = "fetch-"
_SUFFIX = ".dcm"


def _host_prefix() -> str:
    return f"{_PREFIX}{socket.gethostname()}-"


def new_scratch_file(folder: Path | None) -> tuple[int, Path]:
    """An open descriptor and the path of a new, empty temp file in `folder` (None: the temp folder)."""
    fd, name = tempfile.mkstemp(dir=folder, prefix=f"{_host_prefix()}{os.getpid()}-", suffix=_SUFFIX)
    return fd, Path(name)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def abandoned(names: list[str], host_prefix: str, alive: Callable[[int], bool]) -> list[str]:
    """Those of `names` made on this host by a process no longer running (pure, for the tests)."""
    gone = []
    for name in names:
        if not (name.startswith(host_prefix) and name.endswith(_SUFFIX)):
            continue
        pid_text = name[len(host_prefix) :].split("-", 1)[0]
        if pid_text.isdigit() and int(pid_text) != os.getpid() and not alive(int(pid_text)):
            gone.append(name)
    return gone


def remove_abandoned(folder: Path) -> int:
    """Delete the temp files in `folder` whose makers are gone; how many bytes that freed."""
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return 0
    freed = 0
    for name in abandoned(names, _host_prefix(), _alive):
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
