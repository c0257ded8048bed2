"""The Kafka broker's share of `make profile`: async-profiler loaded into the running broker.

py-spy sees only Python. The broker is a JVM, and its CPU per instance is the second largest in `make bench`
(README, "Figures"); what it spends it on was found (the fourteenth session: 36% of it zeroing each new
10 MiB index, tools/devstack/servers.py) by loading async-profiler into it with the JDK's own `jcmd`, no
restart and no JVM flag. This does that for `make profile`: var/profile/kafka.html (a flame graph, open it
in a browser) and kafka.txt (collapsed stacks, for grep and diff, one line per stack and thread).

The library comes from Maven Central's `tools.profiler:async-profiler` jar (its `linux-x64` classifier holds
`libasyncProfiler.so`), fetched by `mvn dependency:copy` into ~/.m2 once and unpacked into the project's
cache folder; without Maven, or on another platform, the broker is not profiled and `make profile` says why.
It samples with `itimer` (the process's CPU-time timer), which needs no perf_events permission.
"""

from __future__ import annotations

import platform
import shutil
import subprocess
import tempfile
import zipfile
from pathlib import Path

from tools.devstack.servers import cache_dir

VERSION = "4.1"
ARTIFACT = f"tools.profiler:async-profiler:{VERSION}:jar:linux-x64"
LIBRARY = "linux-x64/libasyncProfiler.so"
INTERVAL = "5ms"  # CPU time between samples: ~200 a second at one busy core, small beside the broker's own


class NotProfiled(Exception):
    """Why the broker cannot be profiled here (said, not raised further: the Python profiles still count)."""


def agent_command(pid: int, library: Path, action: str, **options: str) -> list[str]:
    """`jcmd <pid> JVMTI.agent_load <library> "<action>,k=v,…"`. jcmd splits its own arguments on commas
    unless the agent's options are one quoted word, so the quotes are part of the argument."""
    words = ",".join([action, *(f"{key}={value}" if value else key for key, value in options.items())])
    return ["jcmd", str(pid), "JVMTI.agent_load", str(library), f'"{words}"']


def library_path() -> Path:
    return cache_dir() / f"async-profiler-{VERSION}" / "libasyncProfiler.so"


def ensure_library() -> Path:
    """The agent library, fetched and unpacked the first time."""
    target = library_path()
    if target.exists():
        return target
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        raise NotProfiled(f"async-profiler's jar here holds a linux-x64 library; this is {platform.machine()}")
    if shutil.which("mvn") is None or shutil.which("jcmd") is None:
        raise NotProfiled("mvn and jcmd (the JDK's) are needed to fetch async-profiler and load it")
    with tempfile.TemporaryDirectory() as scratch:
        fetched = subprocess.run(
            ["mvn", "-B", "-q", "dependency:copy", f"-Dartifact={ARTIFACT}", f"-DoutputDirectory={scratch}"],
            capture_output=True,
            text=True,
            check=False,
        )
        jars = list(Path(scratch).glob("async-profiler-*.jar"))
        if fetched.returncode != 0 or not jars:
            raise NotProfiled(f"mvn could not fetch {ARTIFACT}: {fetched.stdout[-300:]}{fetched.stderr[-300:]}")
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(".part")  # renamed once whole: a half-written library is never loaded
        with zipfile.ZipFile(jars[0]) as jar, jar.open(LIBRARY) as source, partial.open("wb") as out:
            shutil.copyfileobj(source, out)
        partial.rename(target)
    return target


def _load(pid: int, library: Path, action: str, **options: str) -> None:
    done = subprocess.run(agent_command(pid, library, action, **options), capture_output=True, text=True, check=False)
    # jcmd prints the agent's own return code; async-profiler says what was wrong on the line before it.
    if done.returncode != 0 or "return code: 0" not in done.stdout:
        raise NotProfiled(f"jcmd {action} failed: {(done.stdout + done.stderr).strip()[-300:]}")


def start(pid: int, library: Path) -> None:
    _load(pid, library, "start", event="itimer", interval=INTERVAL, threads="")


def stop(pid: int, library: Path, folder: Path) -> list[Path]:
    """Writes the collapsed stacks, then the flame graph (which stops the profiler)."""
    collapsed, graph = folder / "kafka.txt", folder / "kafka.html"
    _load(pid, library, "dump", file=str(collapsed), collapsed="")
    _load(pid, library, "stop", file=str(graph), flamegraph="")
    return [p for p in (collapsed, graph) if p.exists()]
