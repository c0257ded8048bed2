"""`make profile`: `make bench` under py-spy. Every imx service of the devstack (started when not running),
and the bench's own partner gateway once it is up, is sampled by `py-spy record` for the whole run; each
gets a flame graph, var/profile/<name>.svg (and <name>.txt, the same samples as collapsed stacks, for
grep and diff). py-spy attaches to running processes (ptrace: root, or CAP_SYS_PTRACE) and reads their
memory without stopping them (`--nonblocking`), so the run measured is the run profiled, at a small cost
in CPU per sample. Arguments after `--` go to the bench (`BENCH_ARGS`); the bench's own last line (JSON)
is printed as it is, then where the graphs are, and var/profile/summary.txt, each process's functions with
the most samples of their own (tools/profile_summary.py). The Kafka broker is profiled too, by async-profiler loaded
into it (tools/broker_profile.py): var/profile/kafka.html and kafka.txt.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tools import broker_profile
from tools.devstack import Layout, Ports, registered
from tools.devstack.cli import up
from tools.devstack.servers import KAFKA, ROOT
from tools.profile_summary import write_summary
from tools.services_stack import start_services

PY_SPY = Path(sys.executable).with_name("py-spy")
GATEWAY_MARK = "gateway"  # the bench's gateway: `python -m services.cli.main gateway run ...`


@dataclass
class Recording:
    name: str
    pid: int
    outputs: list[Path]
    processes: list[subprocess.Popen[bytes]]

    def stop(self) -> None:
        """py-spy writes its file when interrupted (or when the process it samples ends)."""
        for proc in self.processes:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for proc in self.processes:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()


def py_spy_command(pid: int, rate: int, fmt: str, out: Path, gil: bool = False) -> list[str]:
    """py-spy on `pid` and its children. By default it samples every thread it does not judge idle, and
    it judges a thread in fsync or a socket wait busy: the graphs then show waiting as work. `gil` samples
    only the thread holding the GIL: the Python CPU alone, what a CPU budget is made of."""
    return [
        *(str(PY_SPY), "record", "--pid", str(pid), "--subprocesses", "--nonblocking"),
        *(["--gil"] if gil else []),
        *("--rate", str(rate), "--format", fmt, "--output", str(out)),
    ]


def record(name: str, pid: int, folder: Path, rate: int, gil: bool = False) -> Recording:
    """Two samplers on `pid` and its children (a service runs under its restarting supervisor): a flame
    graph and the raw collapsed stacks."""
    outputs, processes = [], []
    for fmt, suffix in (("flamegraph", "svg"), ("raw", "txt")):
        out = folder / f"{name}.{suffix}"
        log = (folder / f"{name}.{suffix}.log").open("wb")
        processes.append(
            subprocess.Popen(py_spy_command(pid, rate, fmt, out, gil), stdout=log, stderr=subprocess.STDOUT)
        )
        outputs.append(out)
    return Recording(name, pid, outputs, processes)


def children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue
    return out


def find_gateway(bench_pid: int) -> int | None:
    """The bench's `imx gateway run`, a child of the bench process."""
    for pid in children(bench_pid):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(GATEWAY_MARK.encode() in arg for arg in argv) and any(b"python" in arg for arg in argv[:1]):
            return pid
    return None


def start_broker_profile(pid: int | None) -> tuple[int, Path] | None:
    """(broker pid, agent library) once async-profiler runs in the broker; None, said why, when it cannot."""
    if pid is None:
        print("the broker is not profiled: no kafka process registered", file=sys.stderr)
        return None
    try:
        library = broker_profile.ensure_library()
        broker_profile.start(pid, library)
    except broker_profile.NotProfiled as why:
        print(f"the broker is not profiled: {why}", file=sys.stderr)
        return None
    return pid, library


def stop_broker_profile(broker: tuple[int, Path] | None, folder: Path) -> list[Path]:
    if broker is None:
        return []
    try:
        return broker_profile.stop(*broker, folder)
    except broker_profile.NotProfiled as why:
        print(f"the broker's profile was not written: {why}", file=sys.stderr)
        return []


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # Two samplers per process (14 with the bench's gateway): at 50/s py-spy fell ~1 s behind now and then on
    # a 2-core machine at load ~15, and said so in var/profile/<name>.*.log.
    parser.add_argument("--rate", type=int, default=25, help="samples per second per process (py-spy's is 100)")
    parser.add_argument(
        "--gil", action="store_true", help="sample only the thread holding the GIL (CPU alone, no waits)"
    )
    parser.add_argument("bench_args", nargs=argparse.REMAINDER, help="for tools.bench (after --)")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    if not PY_SPY.exists() and shutil.which("py-spy") is None:
        print("py-spy is not installed in the virtual environment; run `make setup`", file=sys.stderr)
        return 2
    layout, ports = Layout.default(os.environ), Ports.from_env(os.environ)
    folder = layout.var / "profile"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    up(layout, ports)
    names = {replica.name for replica in start_services(layout, ports)}
    processes = registered(layout.run)
    recordings = [record(p.name, p.pid, folder, args.rate, args.gil) for p in processes if p.name in names]
    broker = start_broker_profile(next((p.pid for p in processes if p.name == KAFKA), None))
    bench_args = [a for a in args.bench_args if a != "--"]
    bench = subprocess.Popen([sys.executable, "-m", "tools.bench", *bench_args])
    try:
        gateway = None
        while bench.poll() is None:
            if gateway is None and (gateway := find_gateway(bench.pid)) is not None:
                recordings.append(record("bench-gateway", gateway, folder, args.rate, args.gil))
            time.sleep(0.5)
    finally:
        if bench.poll() is None:
            bench.terminate()
            bench.wait()
        for recording in recordings:
            recording.stop()
        broker_graphs = stop_broker_profile(broker, folder)
    made = sorted(p for r in recordings for p in r.outputs if p.exists())
    graphs = [p.name for p in made if p.suffix == ".svg"] + [p.name for p in broker_graphs if p.suffix == ".html"]
    print(f"flame graphs in {folder}: " + ", ".join(graphs), flush=True)
    print(f"each process's functions with the most samples: {write_summary(folder, root=str(ROOT))}", flush=True)
    missing = [r.name for r in recordings if not all(p.exists() for p in r.outputs)]
    if missing:
        print(f"no profile written for: {', '.join(missing)} (see {folder}/<name>.*.log)", file=sys.stderr)
    return bench.returncode or (1 if missing else 0)


if __name__ == "__main__":
    sys.exit(main())
