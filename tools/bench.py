"""`make bench`: what a user feels. N synthetic CT instances (2,000 by default) go by C-STORE into the
running pipeline (started when it is not running) and out through the partner gateway (`imx gateway
run`, a process of its own, signed in on the broker's partner listener with the partner's SCRAM
credentials and DICOMweb key) into a dcmtk `storescp`.

Measured: instances/s from the sender's first C-STORE to the last file `storescp` wrote; latency
accepted → stored per instance from the gateway's receipts (`stored_at_ms - meta.ingested_at_ms`);
CPU milliseconds per instance of every process involved (the five services, Kafka, FerretDB,
PostgreSQL with its backends, the gateway, storescp), read from /proc just before the first send
and when the last file has arrived; the total leaves out storescp, the partner's PACS, as Orthanc's
figure leaves out its own (both are given apart). Then, in the same run, Orthanc doing the same job
on the first 200 of the same files (tools/bench_orthanc.py), three bursts by default, and the ratios
of imx's rate to Orthanc's best and of imx's CPU to Orthanc's lowest: graded against Orthanc keeping
its anonymized copy as imx keeps its de-identified one, and given beside against Orthanc sending the
copy from memory (`*_straight`). The bench's route is
the only one that can match its sender (tools/bench_setup.py). The last line printed is one JSON
object.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from services.cli.settings import CliSettings
from services.common.settings import ServiceSettings
from services.common.topics import Topics
from tools.bench_corpus import bench_data, default_root
from tools.bench_orthanc import GRADED_JOB, STRAIGHT_JOB, orthanc_exchanges
from tools.bench_partner import ReceiptReader, partner_side, skip_leftovers, wait_gateway_ready
from tools.bench_results import (
    BenchRun,
    OrthancFigures,
    cpu_deltas,
    host_warning,
    idle_share,
    latencies_ms,
    machine_figures,
    orthanc_at_its_best,
    result_line,
)
from tools.bench_settle import fold_receipts, wait_reading, wait_settled
from tools.bench_setup import PARTNER, BenchConfig, configure, unconfigure
from tools.bench_targets import run_verdicts, targets_met
from tools.demo.senders import c_store
from tools.devstack import Layout, Ports, mongo_uri, registered
from tools.devstack.cli import kafka_admin_config, up
from tools.dicom_peers import DCMTK_ENV
from tools.proc_cpu import machine_cpu_seconds, sample
from tools.services_stack import start_services

ROUTES_REFRESH_S = 2.0  # routing looks for route changes this often (services/routing/settings.py)


_UUID_UID = re.compile(rb"2\.25\.(\d{9,39})")
_PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"


def renumber_uids(data: bytes, offset: int) -> bytes:
    """`data` with every 2.25 UID in its header (before Pixel Data) changed in its last 8 digits by
    `offset`: the same length (so every element length stays right) and the same mapping everywhere
    (so references, file meta and data set still agree)."""
    end = data.rfind(_PIXEL_DATA_TAG)
    header, rest = (data[:end], data[end:]) if end > 0 else (data, b"")

    def renumber(match: re.Match[bytes]) -> bytes:
        digits = match.group(1)
        low = (int(digits[-8:]) + offset) % 10**8
        return b"2.25." + digits[:-8] + b"%08d" % low

    return _UUID_UID.sub(renumber, header) + rest


def unique_copies(files: list[Path], folder: Path, token: bytes) -> list[Path]:
    """Copies that are new instances: new UIDs, and this run's token in the last pixel bytes.

    The same UIDs again would be a corrected re-send of instances partners already have (delivery
    keeps the first object it recorded for a SOP Instance UID and serves that one); the same bytes
    again would find every object in the content-addressed blob store and skip its write and fsyncs,
    which a real new instance never does. Pixel Data is the last element of these files.
    """
    folder.mkdir(parents=True, exist_ok=True)
    offset = int.from_bytes(token[:4], "big") % 10**8
    copies = []
    for source in files:
        data = bytearray(renumber_uids(source.read_bytes(), offset))
        data[-len(token) :] = token
        copy = folder / source.name
        copy.write_bytes(data)
        copies.append(copy)
    return copies


def send_storescu(files: list[Path], ae: str, cli: CliSettings, port: int | None = None) -> None:
    subprocess.run(
        [
            "storescu",
            "-xe",
            "-aet",
            ae,
            "-aec",
            cli.dicom_ae_title,
            "--max-pdu",
            "131072",
            cli.dicom_host,
            str(port or cli.dicom_port),
            *map(str, files),
        ],
        check=True,
        env={**os.environ, **DCMTK_ENV},  # FIELD-NOTES: dcmtk waits ~40 ms per response without it
        capture_output=True,
    )


def start_senders(
    files: list[Path], associations: int, send: Callable[[list[Path], int], None]
) -> list[threading.Thread]:
    """One thread per association, each with every `associations`-th file and its index."""
    threads = [threading.Thread(target=send, args=(files[i::associations], i)) for i in range(associations)]
    for thread in threads:
        thread.start()
    return threads


def children_cpu_s() -> float:
    """CPU of this process's waited-for children: the storescu senders."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instances", type=int, default=int(os.environ.get("IMX_BENCH_INSTANCES", "2000")))
    parser.add_argument("--associations", type=int, default=2, help="parallel C-STORE associations")
    parser.add_argument(
        "--profile",
        default=os.environ.get("IMX_BENCH_PROFILE", "basic"),
        help="de-identification profile of the route ('' = pass-through)",
    )
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--stall-timeout", type=float, default=120.0, help="give up after this long without a file")
    parser.add_argument(
        "--reuse-content",
        action="store_true",
        help="send the cached files as they are (blobs from earlier runs are found, nothing is written)",
    )
    parser.add_argument("--skip-orthanc", action="store_true", help="do not run the Orthanc comparison")
    parser.add_argument("--orthanc-instances", type=int, default=200, help="the first N files go through Orthanc")
    parser.add_argument(
        "--orthanc-bursts",
        type=int,
        default=int(os.environ.get("IMX_BENCH_ORTHANC_BURSTS", "3")),
        help="Orthanc runs its burst this many times each way; the ratios are taken against its best",
    )
    parser.add_argument(
        "--skip-orthanc-straight",
        action="store_true",
        help="only the graded Orthanc job, not the one that sends its copy from memory",
    )
    args = parser.parse_args()
    if args.orthanc_bursts < 1:
        parser.error("--orthanc-bursts must be at least 1 (or use --skip-orthanc)")
    return args


def orthanc_at_best_per_job(files: list[Path], args: argparse.Namespace, jobs: list[str]) -> dict[str, OrthancFigures]:
    """Orthanc's `jobs` over `files`, `--orthanc-bursts` times each, each at its best (orthanc_at_its_best)."""
    print(f"Orthanc doing the same job on {len(files)} files, {args.orthanc_bursts} burst(s) each way", flush=True)
    bursts: dict[str, list[dict[str, float]]] = {job: [] for job in jobs}
    for job, burst in orthanc_exchanges(files, args.associations, args.orthanc_bursts, jobs=jobs):
        bursts[job].append(burst)
        figures = f"{burst['per_s']}/s, {burst['cpu_ms_per_instance']} ms CPU per instance"
        print(f"  {job} burst {len(bursts[job])}: {figures}", flush=True)
    return {job: orthanc_at_its_best(found) for job, found in bursts.items()}


def main() -> int:
    args = parse_args()
    # A stopped bench (SIGTERM, as `timeout` sends) still removes its route and stops its gateway.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    load_before = os.getloadavg()
    layout, ports = Layout.default(os.environ), Ports.from_env(os.environ)
    cli = CliSettings()
    topics = Topics(os.environ.get("IMX_TOPIC_PREFIX", ""))
    up(layout, ports)
    # With IMX_DEVSTACK_REPLICAS=ingest=2,... the associations are spread over the ingest replicas.
    plan = start_services(layout, ports)
    dicom_ports = [dict(r.ports.other)["IMX_DICOM_PORT"] for r in plan if r.service == "ingest"]
    print(f"preparing {args.instances} CT instances (cached under {default_root()})", flush=True)
    originals = bench_data(None, args.instances)
    files = originals
    org = f"bench-{secrets.token_hex(4)}"
    config = configure(cli, org, f"B{secrets.token_hex(7).upper()}"[:16], args.profile)
    if config.disabled:
        names = ", ".join(r.route_id for r in config.disabled)
        print(f"routes that would also match the bench's sender, disabled for this run: {names}", flush=True)
    run_folder = layout.var / "bench" / f"run-{org}"
    try:
        if not args.reuse_content:
            files = unique_copies(files, run_folder / "send", secrets.token_bytes(8))
        time.sleep(ROUTES_REFRESH_S + 1.0)  # routing sees the new route before the first instance
        run = measure(args, files, config, cli, layout, ports, topics, run_folder, dicom_ports)
    finally:
        unconfigure(cli, config)
        shutil.rmtree(run_folder, ignore_errors=True)
    if not args.skip_orthanc:
        # Orthanc is compared with imx's rate, so it gets the same files: the originals, not this run's copies.
        jobs = [GRADED_JOB] if args.skip_orthanc_straight else [GRADED_JOB, STRAIGHT_JOB]
        best = orthanc_at_best_per_job(originals[: args.orthanc_instances], args, jobs)
        run.orthanc, run.orthanc_straight = best[GRADED_JOB], best.get(STRAIGHT_JOB)
    run.extra["load_before"] = [round(v, 2) for v in load_before]
    run.extra["load_after"] = [round(v, 2) for v in os.getloadavg()]
    run.extra["date"] = time.strftime("%Y-%m-%d %H:%M")
    result = result_line(run)
    if warning := host_warning(result):
        print(warning, flush=True)
    verdicts = run_verdicts(result)
    print("issue 10's targets in this run:", flush=True)
    for verdict in verdicts:
        print(f"  {verdict.line}", flush=True)
    result["targets_met"] = targets_met(verdicts)
    print(json.dumps(result))
    return 0 if run.stored == run.sent and len(run.latencies) == run.sent else 1


def sample_window(pids: dict[str, tuple[int, bool]]) -> tuple[dict[str, float], dict[str, float], float]:
    """One end of the CPU window: each named process, the whole machine, and this bench process."""
    return sample(pids), machine_cpu_seconds(), time.process_time()


def measure(
    args: argparse.Namespace,
    files: list[Path],
    config: BenchConfig,
    cli: CliSettings,
    layout: Layout,
    ports: Ports,
    topics: Topics,
    run_folder: Path,
    dicom_ports: list[int] | None = None,
) -> BenchRun:
    internal, ae_title = f"127.0.0.1:{ports.kafka}", config.ae_title
    partner_bootstrap, gateway_log = f"127.0.0.1:{ports.kafka_partner}", layout.log / "bench-gateway.log"
    admin = kafka_admin_config(layout)  # the internal listener needs SASL: the bench reads as the admin
    if skipped := skip_leftovers(internal, topics, admin):
        print(f"skipped {skipped} messages an earlier, interrupted run left on the partner's feed", flush=True)
    with partner_side(run_folder, config.credentials, partner_bootstrap, gateway_log) as side:
        print("gateway started; waiting until it has joined and its feed is drained", flush=True)
        wait_gateway_ready(side, internal, topics, client_config=admin)
        waiting = time.monotonic()
        if not wait_reading(internal, topics, topics.receipts(PARTNER), client_config=admin):
            print("audit or delivery did not take up the partner's receipts within 60 s; measuring anyway", flush=True)
        elif (waited := time.monotonic() - waiting) >= 1:
            print(f"audit and delivery took up the partner's receipts after {waited:.1f} s more", flush=True)
        for leftover in side.storescp.files():  # what an interrupted earlier run left on the feed
            leftover.unlink()
        reader = ReceiptReader(internal, topics, admin)
        # Whole process trees: PostgreSQL forks a backend per connection, and each imx service runs
        # under its restarting supervisor (tools/devstack/supervise.py).
        pids = {p.name: (p.pid, True) for p in registered(layout.run)}
        pids["gateway"] = (side.gateway.pid, False)
        pids["storescp"] = (side.storescp.process.pid, False)
        use_storescu = shutil.which("storescu") is not None
        sent_ms: list[float] = []

        def send(chunk: list[Path], association: int) -> None:
            port = dicom_ports[association % len(dicom_ports)] if dicom_ports else cli.dicom_port
            if use_storescu:
                send_storescu(chunk, ae_title, cli, port)
            else:
                c_store(chunk, ae_title, cli.dicom_host, port, cli.dicom_ae_title)
            sent_ms.append(time.time() * 1000)

        print(f"sending {len(files)} instances over {args.associations} associations", flush=True)
        sender_cpu = children_cpu_s()
        cpu_before, machine_before, driver_before = sample_window(pids)
        started_ms = time.time() * 1000
        senders = start_senders(files, args.associations, send)
        deadline = time.monotonic() + args.timeout
        count = 0
        cpu_after, machine_after, driver_after = cpu_before, machine_before, driver_before
        machine_at_arrival: dict[str, float] = {}
        next_count = 0.0
        progress_at = time.monotonic()
        while time.monotonic() < deadline:
            reader.poll(timeout_ms=200)
            if time.monotonic() >= next_count:
                previous, count = count, side.storescp.count()
                next_count = time.monotonic() + 0.5
                if count > previous:
                    progress_at = time.monotonic()
                elif time.monotonic() - progress_at > args.stall_timeout:
                    print(f"no file arrived for {args.stall_timeout:.0f} s: giving up", flush=True)
                    break
                if count >= len(files):
                    machine_at_arrival = machine_cpu_seconds()
                    break
                if not side.gateway.alive():
                    raise RuntimeError(
                        f"the gateway exited; end of {side.gateway.log_path}:\n{side.gateway.log_tail()}"
                    )
        arrived = side.storescp.files()
        if len(arrived) < len(files):
            cpu_after, machine_after, driver_after = sample_window(pids)
            print(f"timed out: {len(arrived)} of {len(files)} files arrived", flush=True)
        receipts_deadline = time.monotonic() + 30
        while len(latencies_ms(reader.receipts, started_ms)) < len(arrived) and time.monotonic() < receipts_deadline:
            reader.poll(timeout_ms=200)
        reader.close()
        settle_s, receipts_folded = 0.0, 0
        if len(arrived) >= len(files):
            # The CPU window closes once delivery and audit have taken everything the run produced
            # (the partner's receipts, audit's last second of records), not at the last arrival.
            settling = time.monotonic()
            if unsettled := wait_settled(internal, topics, client_config=admin):
                print(f"{unsettled} messages still unread by delivery or audit after 30 s", flush=True)
            # Delivery folds them every 5 minutes, outside the window: its databases' work belongs to the run.
            receipts_folded = fold_receipts(mongo_uri(ports.mongo), ServiceSettings().mongo_db)
            print(f"folded {receipts_folded} receipts into delivery's records, as its timer would", flush=True)
            cpu_after, machine_after, driver_after = sample_window(pids)
            settle_s = time.monotonic() - settling
        for sender in senders:
            sender.join()
        sender_cpu = children_cpu_s() - sender_cpu
    last_ms = max((p.stat().st_mtime * 1000 for p in arrived), default=started_ms)
    stored = len(arrived)
    run = BenchRun(
        sent=len(files),
        stored=stored,
        seconds=(last_ms - started_ms) / 1000,
        ingest_seconds=((max(sent_ms) - started_ms) / 1000) if sent_ms else 0.0,
        latencies=latencies_ms(reader.receipts, started_ms),
        cpu_seconds=cpu_deltas(cpu_before, cpu_after),
        profile=args.profile or "pass-through",
        sender=f"storescu x{args.associations}" if use_storescu else f"pynetdicom x{args.associations}",
        content="reused" if args.reuse_content else "unique",
    )
    if use_storescu and stored:
        run.extra["sender_cpu_ms_per_instance"] = round(sender_cpu * 1000 / len(files), 2)
    run.extra["settle_s"] = round(settle_s, 2)  # from the last arrival and its receipts to the CPU window's end
    run.extra["receipts_folded"] = receipts_folded  # into delivery's records, inside the window (bench_settle.py)
    # The machine as a whole over the same window: where CPU went that no process above accounts for.
    driver_s = driver_after - driver_before
    known_s = sum(run.cpu_seconds.values()) + driver_s + (sender_cpu if use_storescu else 0.0)
    if stored:  # the instrument's own weight: the machine's CPUs it took from what it measures
        run.extra["driver_cpu_ms_per_instance"] = round(driver_s * 1000 / stored, 2)
    run.extra |= machine_figures(machine_before, machine_after, known_s, stored)
    if (sending_idle := idle_share(machine_before, machine_at_arrival)) is not None:
        run.extra["idle_share_while_sending"] = sending_idle
        print(f"machine from the first C-STORE to the last arrival: {sending_idle:.0%} idle or waiting for the disk")
    return run


if __name__ == "__main__":
    sys.exit(main())
