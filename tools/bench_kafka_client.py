"""`make bench-kafka-client`: what a stage's Kafka client costs, imx's bus (kafka-python) against librdkafka
(confluent-kafka), on the same broker at the same paced rate.

Issue 10's CPU target needs decisions, and this measures one of them. A stage hop (`hop`) reads a record
and publishes one (acks=all, idempotent), committing only what the broker acknowledged; a reader
(`read`) only reads and commits, as audit does (tools/bench_kafka_stage.py runs either with either
client). An instance's records in the pipeline are some of each: the README counts them.

A private broker (KRaft, a temporary folder, removed after) gets `--records` records of
`--payload-bytes` each at `--rate` per second, the pace of the pipeline in `make bench`, rather than a
backlog read at full speed, which would hide the per-fetch and per-flush costs a stage pays when it keeps
up. For each mode, runs alternate imx, librdkafka, librdkafka, imx, ... so a drift of the machine's speed
falls on both. Each run gives the stage's CPU per record and the broker's, whose share includes taking
the paced records in.

confluent-kafka is not a project dependency: it is installed in its own environment
(var/bench-venv/librdkafka, pinned below), as `make bench-deid` does for its peers. The last line
printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic
from rich.progress import track

from tools import devstack, proc_cpu
from tools.bench_venv import ensure_venv
from tools.services_stack import PROCESS_ENV

ROOT = Path(__file__).resolve().parent.parent
STAGE = ROOT / "tools" / "bench_kafka_stage.py"
LIBRDKAFKA_REQUIREMENTS = ("confluent-kafka==2.16.2",)
CLIENTS = ("imx", "librdkafka")
MODES = ("hop", "read")
PARTITIONS = 6  # what the services give the pipeline topics they create (`topic_partitions`)
STAGE_TIMEOUT_S = 300.0
READY_TIMEOUT_S = 120.0  # joining the group and reading the warm-up record


class BenchError(RuntimeError):
    pass


@dataclass(frozen=True)
class Run:
    mode: str
    client: str
    version: str
    records: int
    stage_cpu_ms: float  # per record
    broker_cpu_ms: float  # per record, taking the paced records in included
    seconds: float


def run_order(rounds: int) -> list[str]:
    """imx, librdkafka, then librdkafka, imx, ...: each client first as often as the other over pairs."""
    order: list[str] = []
    for index in range(rounds):
        order.extend(CLIENTS if index % 2 == 0 else reversed(CLIENTS))
    return order


def pace_deadlines(records: int, rate: float, start: float) -> list[float]:
    """When each record is due: record i at start + (i + 1) / rate."""
    if rate <= 0:
        raise ValueError("the rate must be positive")
    return [start + (index + 1) / rate for index in range(records)]


def client_medians(runs: Sequence[Run]) -> dict[str, dict[str, Any]]:
    """Per client, the medians of its runs' CPU per record (None when it did not run)."""
    by_client: dict[str, dict[str, Any]] = {}
    for client in CLIENTS:
        mine = [r for r in runs if r.client == client]
        by_client[client] = {
            "runs": len(mine),
            "stage_cpu_ms": round(statistics.median(r.stage_cpu_ms for r in mine), 4) if mine else None,
            "broker_cpu_ms": round(statistics.median(r.broker_cpu_ms for r in mine), 4) if mine else None,
            "version": mine[0].version if mine else None,
        }
    return by_client


def mode_summary(runs: Sequence[Run]) -> dict[str, Any]:
    """One mode's medians per client, and what librdkafka would save per record: in the stage, and on the
    machine (the stage and the broker)."""
    clients = client_medians(runs)
    imx, other = clients["imx"], clients["librdkafka"]
    if not (imx["runs"] and other["runs"]):
        return {"clients": clients, "stage_saving_ms": None, "machine_saving_ms": None, "stage_ratio": None}
    return {
        "clients": clients,
        "stage_saving_ms": round(imx["stage_cpu_ms"] - other["stage_cpu_ms"], 4),
        "machine_saving_ms": round(
            imx["stage_cpu_ms"] + imx["broker_cpu_ms"] - other["stage_cpu_ms"] - other["broker_cpu_ms"], 4
        ),
        "stage_ratio": round(imx["stage_cpu_ms"] / other["stage_cpu_ms"], 2) if other["stage_cpu_ms"] else None,
    }


def summary(runs: Sequence[Run], records: int, rate: float, payload_bytes: int) -> dict[str, Any]:
    """Each mode that ran, summarised; every run; the settings."""
    modes = {
        mode: mode_summary([r for r in runs if r.mode == mode]) for mode in MODES if any(r.mode == mode for r in runs)
    }
    return {
        "records": records,
        "rate_per_s": rate,
        "payload_bytes": payload_bytes,
        "modes": modes,
        "runs": [r.__dict__ for r in runs],
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }


MODE_WORDS = {"hop": "read and publish", "read": "read only"}


def describe(figures: dict[str, Any]) -> list[str]:
    """The lines printed before the JSON."""
    lines = []
    for mode, figures_of_mode in figures["modes"].items():
        for client in CLIENTS:
            mine = figures_of_mode["clients"][client]
            if not mine["runs"]:
                lines.append(f"{mode} ({MODE_WORDS[mode]}), {client}: not run")
                continue
            lines.append(
                f"{mode} ({MODE_WORDS[mode]}), {client} ({mine['version']}): stage {mine['stage_cpu_ms']:.3f} ms "
                f"of CPU per record, broker {mine['broker_cpu_ms']:.3f} ms (medians of {mine['runs']} runs)"
            )
        if figures_of_mode["stage_saving_ms"] is not None:
            lines.append(
                f"{mode}: librdkafka's stage takes {figures_of_mode['stage_saving_ms']:.3f} ms less CPU per record "
                f"(imx's takes {figures_of_mode['stage_ratio']}x as much); with the broker's share, "
                f"{figures_of_mode['machine_saving_ms']:.3f} ms less"
            )
    return lines


@dataclass(frozen=True)
class Hop:
    """The topics and consumer group of one run."""

    source: str
    target: str
    group: str

    @classmethod
    def numbered(cls, index: int, prefix: str = "bench-kafka-client", mode: str = "hop") -> Hop:
        """A reader (`read`) has no target topic."""
        target = f"{prefix}-out-{index}" if mode == "hop" else ""
        return cls(f"{prefix}-in-{index}", target, f"{prefix}-{index}")


def stage_command(client: str, python: Path, bootstrap: str, hop: Hop, records: int) -> list[str]:
    # imx's stage imports the project, so it runs as a module from the repository; librdkafka's as a file.
    entry = ["-m", "tools.bench_kafka_stage"] if client == "imx" else [str(STAGE)]
    return [
        str(python),
        *entry,
        client,
        *("--bootstrap", bootstrap, "--source", hop.source),
        *(("--target", hop.target) if hop.target else ()),
        *("--group", hop.group, "--records", str(records)),
    ]


def create_topics(bootstrap: str, hops: Sequence[Hop]) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        names = [name for hop in hops for name in (hop.source, hop.target) if name]
        admin.create_topics([NewTopic(name, PARTITIONS, 1) for name in names])
    finally:
        admin.close()


def wait_until_ready(stage: subprocess.Popen[bytes], client: str, timeout_s: float) -> bytes:
    """Until the stage says `ready` (it has read the warm-up record); returns what followed it. Other
    lines on its stdout (a wrapper's, a library's) are skipped. A stage that ends, or stays silent past
    `timeout_s`, is an error and is killed rather than left waiting for records that will not come. Reads
    the pipe unbuffered, so a line already read is never waited for."""
    assert stage.stdout is not None
    fd, seen, deadline = stage.stdout.fileno(), b"", time.monotonic() + timeout_s
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while (left := deadline - time.monotonic()) > 0:
            if not selector.select(left):
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                stage.wait()
                raise BenchError(f"{client}'s stage ended before reading (exit {stage.returncode})")
            seen += chunk
            before, ready, after = seen.partition(b"ready\n")
            if ready and (not before or before.endswith(b"\n")):
                return after
    stage.kill()
    raise BenchError(f"{client}'s stage read nothing within {timeout_s:.0f} s")


def one_run(
    mode: str,
    client: str,
    python: Path,
    bootstrap: str,
    hop: Hop,
    broker_cpu_seconds: Callable[[], float],
    records: int,
    rate: float,
    payload: bytes,
    label: str = "",
) -> Run:
    """One stage over `records` paced records (after a warm-up one), its topics already made."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
    # The stage's stderr goes to a file: a pipe nobody reads while the records are paced could fill and
    # stop it. Its end is quoted when the stage fails.
    with tempfile.TemporaryFile() as stderr:
        stage = subprocess.Popen(
            stage_command(client, python, bootstrap, hop, records),
            cwd=ROOT,
            env={**os.environ, **PROCESS_ENV},  # as the services run (tools/services_stack.py), for both clients
            stdout=subprocess.PIPE,
            stderr=stderr,
        )
        try:
            headers = [("traceparent", b"00-" + b"0" * 32 + b"-" + b"0" * 16 + b"-01"), ("imx-type", b"bench")]
            producer.send(hop.source, key=b"warm-up", value=payload, headers=headers).get(timeout=60)
            after_ready = wait_until_ready(stage, client, READY_TIMEOUT_S)
            broker_before = broker_cpu_seconds()
            deadlines = pace_deadlines(records, rate, time.monotonic())
            for number, due in enumerate(
                track(deadlines, description=label or client, transient=True, disable=not sys.stdout.isatty())
            ):
                producer.send(hop.source, key=f"study-{number % 97}".encode(), value=payload, headers=headers)
                wait = due - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
            producer.flush(timeout=60)
            out = after_ready + stage.communicate(timeout=STAGE_TIMEOUT_S)[0]
            broker_cpu = broker_cpu_seconds() - broker_before
        except BenchError as error:
            raise BenchError(f"{error}: {tail(stderr)}") from None
        finally:
            if stage.poll() is None:
                stage.kill()
                stage.wait()
            producer.close()
        # The stage's result is its last JSON line; a wrapper (a profiler) may print after it.
        lines = [line for line in out.decode(errors="replace").splitlines() if line.startswith("{")]
        if stage.returncode != 0 or not lines:
            raise BenchError(f"{client}'s stage failed (exit {stage.returncode}): {tail(stderr)}")
    result = json.loads(lines[-1])
    return Run(
        mode=mode,
        client=client,
        version=result["version"],
        records=result["records"],
        stage_cpu_ms=result["cpu_ms_per_record"],
        broker_cpu_ms=round(broker_cpu * 1000 / records, 4),
        seconds=result["seconds"],
    )


def tail(file: IO[bytes], limit: int = 500) -> str:
    """The last `limit` characters written to `file`."""
    file.seek(0)
    return file.read().decode(errors="replace")[-limit:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=3000, help="records per run, after a warm-up one")
    parser.add_argument("--rate", type=float, default=150.0, help="records per second offered to the stage")
    parser.add_argument("--payload-bytes", type=int, default=1024, help="size of each record's value")
    parser.add_argument("--rounds", type=int, default=3, help="runs per client and mode, alternating")
    parser.add_argument("--modes", default=",".join(MODES), help="hop (read and publish), read (read only), or both")
    parser.add_argument("--venvs", type=Path, default=ROOT / "var" / "bench-venv", help="librdkafka's environment")
    args = parser.parse_args(argv)
    if args.records < 1 or args.rounds < 1 or args.rate <= 0 or args.payload_bytes < 0:
        parser.error("--records, --rounds and --rate must be positive, --payload-bytes at least 0")
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or set(modes) - set(MODES):
        parser.error(f"--modes: choose from {', '.join(MODES)}")
    pythons = {
        "imx": Path(sys.executable),
        "librdkafka": ensure_venv(args.venvs, "librdkafka", LIBRDKAFKA_REQUIREMENTS),
    }
    order = [(mode, client) for mode in modes for client in run_order(args.rounds)]
    root = Path(tempfile.mkdtemp(prefix="bench-kafka-client-"))
    port, controller = devstack.free_ports(2)
    print(f"starting a private Kafka broker on 127.0.0.1:{port} (in {root})", flush=True)
    broker = devstack.start_kafka(port, controller, root / "kafka", root, die_with_parent=True)
    try:
        hops = [Hop.numbered(index, mode=mode) for index, (mode, _client) in enumerate(order)]
        create_topics(broker.endpoint, hops)
        payload = os.urandom(args.payload_bytes)
        runs = []
        for index, (mode, client) in enumerate(order):
            label = f"run {index + 1}/{len(order)} {mode} {client}"
            run = one_run(
                mode,
                client,
                pythons[client],
                broker.endpoint,
                hops[index],
                lambda: proc_cpu.tree_cpu_seconds(broker.pid),
                args.records,
                args.rate,
                payload,
                label,
            )
            print(
                f"{label}: stage {run.stage_cpu_ms:.3f} ms of CPU per record, "
                f"broker {run.broker_cpu_ms:.3f} ms, {run.seconds:.1f} s",
                flush=True,
            )
            runs.append(run)
    except BenchError as error:
        print(f"bench-kafka-client: {error}", file=sys.stderr)
        return 1
    finally:
        broker.stop()
        shutil.rmtree(root, ignore_errors=True)
    figures = summary(runs, args.records, args.rate, args.payload_bytes)
    for line in describe(figures):
        print(line)
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
