"""`make bench`: push N synthetic CT instances through the running pipeline (starting what is not
running) and measure ingest-accepted → on-the-partner-topic latency and end-to-end throughput.

Each run registers a new sending organisation, so the same cached data set is not deduplicated as a
re-send. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
from kafka import KafkaConsumer

from services.cli.settings import CliSettings
from services.common.bus import MAX_MESSAGE_BYTES
from services.common.dicom.part10 import dataset_to_bytes
from services.common.dicom.synthetic import plan_study, study_instances
from services.common.topics import Topics
from services.proto_gen.imx.v1 import admin_pb2, admin_pb2_grpc, events_pb2
from tools.demo.senders import c_store
from tools.devstack import Layout, Ports
from tools.devstack.cli import up
from tools.services_stack import start_services

PARTNER = "bench-partner"


def bench_data(root: Path, instances: int, per_study: int = 100) -> list[Path]:
    """CT instances under `root`, generated once and reused (deterministic, seed = study index)."""
    folder = root / f"ct-{instances}"
    done = folder / ".complete"
    if not done.exists():
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        written = 0
        study = 0
        while written < instances:
            count = min(per_study, instances - written)
            for ds in study_instances(plan_study(10_000 + study, "CT", count, "BENCH")):
                (folder / f"{written:06d}.dcm").write_bytes(dataset_to_bytes(ds))
                written += 1
            study += 1
        done.touch()
    return sorted(folder.glob("*.dcm"))


def unique_copies(files: list[Path], folder: Path, token: bytes) -> list[Path]:
    """Copies whose last pixel bytes carry this run's token.

    The blob store is content-addressed: a second run of the cached files would find every object
    (the source and, with the same partner key, the de-identified copy) already stored and skip the
    write and its fsyncs, which a real new instance never does. Pixel Data is the last element of
    these files, so the header the pipeline reads is untouched.
    """
    folder.mkdir(parents=True, exist_ok=True)
    copies = []
    for source in files:
        data = bytearray(source.read_bytes())
        data[-len(token) :] = token
        copy = folder / source.name
        copy.write_bytes(data)
        copies.append(copy)
    return copies


def configure(cli: CliSettings, profile: str) -> tuple[str, str]:
    org = f"bench-{secrets.token_hex(4)}"
    ae = f"B{secrets.token_hex(7).upper()}"[:16]
    with grpc.insecure_channel(cli.ingest_grpc) as channel:
        admin_pb2_grpc.OrganisationAdminStub(channel).AddOrganisation(
            admin_pb2.AddOrganisationRequest(organisation=admin_pb2.Organisation(org_id=org, ae_titles=[ae])),
            timeout=10,
        )
    with grpc.insecure_channel(cli.delivery_grpc) as channel:
        admin_pb2_grpc.PartnerAdminStub(channel).AddPartner(
            admin_pb2.AddPartnerRequest(partner=admin_pb2.Partner(partner_id=PARTNER, name="benchmark")), timeout=30
        )
    with grpc.insecure_channel(cli.routing_grpc) as channel:
        admin_pb2_grpc.RoutingAdminStub(channel).AddRoute(
            admin_pb2.AddRouteRequest(
                route=admin_pb2.Route(
                    route_id=org,
                    partner_id=PARTNER,
                    profile=profile,
                    priority=1,
                    enabled=True,
                    match=admin_pb2.RouteMatch(source_orgs=[org]),
                )
            ),
            timeout=10,
        )
    return org, ae


def send_storescu(files: list[Path], ae: str, cli: CliSettings) -> None:
    env = {**os.environ, "TCP_NODELAY": "1"}  # FIELD-NOTES: dcmtk waits ~40 ms per response without it
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
            str(cli.dicom_port),
            *map(str, files),
        ],
        check=True,
        env=env,
        capture_output=True,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--instances", type=int, default=int(os.environ.get("IMX_BENCH_INSTANCES", "2000")))
    parser.add_argument("--associations", type=int, default=2, help="parallel C-STORE associations")
    parser.add_argument(
        "--profile",
        default=os.environ.get("IMX_BENCH_PROFILE", "basic"),
        help="de-identification profile of the route ('' = pass-through)",
    )
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument(
        "--reuse-content",
        action="store_true",
        help="send the cached files as they are (blobs from earlier runs are found, nothing is written)",
    )
    args = parser.parse_args()

    layout, ports = Layout.default(os.environ), Ports.from_env(os.environ)
    cli = CliSettings()
    up(layout, ports)
    start_services(layout, ports)
    print(f"preparing {args.instances} CT instances (cached under {layout.var / 'bench'})", flush=True)
    files = bench_data(layout.var / "bench", args.instances)
    org, ae = configure(cli, args.profile)
    run_folder = layout.var / "bench" / f"run-{org}"
    if not args.reuse_content:
        files = unique_copies(files, run_folder, secrets.token_bytes(8))
    topic = Topics(os.environ.get("IMX_TOPIC_PREFIX", "")).partner(PARTNER)

    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=f"127.0.0.1:{ports.kafka}",
        group_id=f"bench-reader-{org}",
        auto_offset_reset="latest",
        enable_auto_commit=False,
        max_partition_fetch_bytes=MAX_MESSAGE_BYTES,
        fetch_max_bytes=MAX_MESSAGE_BYTES,
        metrics_enabled=False,
    )
    while not consumer.assignment():  # join before sending, so "latest" is before our first message
        consumer.poll(timeout_ms=200)
    for tp in consumer.assignment():
        consumer.position(tp)

    use_storescu = shutil.which("storescu") is not None
    chunks = [files[i :: args.associations] for i in range(args.associations)]
    started_ms = time.time() * 1000
    sent_ms: list[float] = []  # when each sender finished: ingest's own rate, apart from the stages after it

    def send(chunk: list[Path]) -> None:
        if use_storescu:
            send_storescu(chunk, ae, cli)
        else:
            c_store(chunk, ae, cli.dicom_host, cli.dicom_port, cli.dicom_ae_title)
        sent_ms.append(time.time() * 1000)

    senders = [threading.Thread(target=send, args=(chunk,)) for chunk in chunks]
    for sender in senders:
        sender.start()
    latencies: list[float] = []
    last_ms = started_ms
    deadline = time.monotonic() + args.timeout
    while len(latencies) < len(files) and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=500).values():
            for record in records:
                delivery = events_pb2.PartnerDelivery.FromString(record.value)
                if delivery.meta.ingested_at_ms < started_ms:
                    continue  # an earlier run's delivery
                latencies.append(record.timestamp - delivery.meta.ingested_at_ms)
                last_ms = max(last_ms, record.timestamp)
    for sender in senders:
        sender.join()
    consumer.close()
    shutil.rmtree(run_folder, ignore_errors=True)
    seconds = (last_ms - started_ms) / 1000
    latencies.sort()

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] if latencies else float("nan")

    result = {
        "instances": len(latencies),
        "sent": len(files),
        "seconds": round(seconds, 2),
        "instances_per_s": round(len(latencies) / seconds, 1) if seconds > 0 else 0.0,
        "ingest_per_s": round(len(files) / ((max(sent_ms) - started_ms) / 1000), 1) if sent_ms else 0.0,
        "p50_ms": round(pct(0.50)),
        "p95_ms": round(pct(0.95)),
        "p99_ms": round(pct(0.99)),
        "mean_ms": round(statistics.fmean(latencies)) if latencies else None,
        "profile": args.profile or "pass-through",
        "sender": f"storescu x{args.associations}" if use_storescu else f"pynetdicom x{args.associations}",
        "content": "reused" if args.reuse_content else "unique",
    }
    print(json.dumps(result))
    return 0 if len(latencies) == len(files) else 1


if __name__ == "__main__":
    sys.exit(main())
