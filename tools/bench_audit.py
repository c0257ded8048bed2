"""`make bench-audit`: N audit records (default 1,000,000, IMX_BENCH_AUDIT_RECORDS) through the audit service
from Kafka events, then the analysts' queries, timed.

Starts its own Kafka and FerretDB-on-PostgreSQL in a temporary folder (or uses IMX_BENCH_KAFKA and
IMX_BENCH_MONGO), generates event journeys (ingested → routed → prepared → outcome → receipt; some
quarantined) across ~100 sending organisations, ~50 partners, nine modalities and 30 days, publishes them
with the BusProducer under a topic prefix of its own, runs the real audit service
(services.audit.main.serve) over them and times until every record is counted. Then it asks the HTTP API
for study trails, a month of one organisation's daily figures and one page of events in a time window.
Everything it started is stopped and removed at the end. The last line is JSON.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import random
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from pymongo import MongoClient, monitoring

from services.audit.api import create_app
from services.audit.consumer import AuditHandler, audit_stage_spec
from services.audit.main import AuditEndpoints, serve
from services.audit.settings import AuditSettings
from services.audit.store import MongoAuditStore
from services.common.bus import BusProducer, Handler, ensure_topics
from services.common.control_auth import control_auth
from services.common.control_server import ControlServer
from services.common.events import event_id, event_message
from services.common.http_server import HttpServer
from services.common.messages import OutgoingMessage
from services.common.mongo import connect
from services.common.runtime import run_stage
from services.common.topics import Topics
from services.proto_gen.imx.v1 import events_pb2 as pb
from tools import devstack, proc_cpu

START = datetime(2026, 1, 1, tzinfo=UTC)
DAYS = 30
# Modality: (share of studies, instances per study low..high, object size in bytes)
MODALITIES = {
    "CT": (0.25, (40, 300), 530_000),
    "MR": (0.15, (60, 400), 270_000),
    "CR": (0.20, (1, 4), 9_000_000),
    "DX": (0.12, (1, 4), 12_000_000),
    "US": (0.12, (5, 40), 800_000),
    "MG": (0.06, (4, 8), 40_000_000),
    "NM": (0.03, (20, 100), 600_000),
    "PT": (0.03, (100, 300), 350_000),
    "XA": (0.04, (10, 60), 1_000_000),
}


def _uid_225(uid: str) -> str:
    return "2.25." + str(int(hashlib.sha256(uid.encode()).hexdigest()[:24], 16))


@dataclass
class Plan:
    """What was generated: enough to ask about it afterwards."""

    records: int = 0
    studies: list[str] = field(default_factory=list)
    copies: list[str] = field(default_factory=list)
    orgs: list[str] = field(default_factory=list)


def journeys(topics: Topics, target: int, plan: Plan, seed: int = 7) -> Iterator[OutgoingMessage]:
    """Studies in time order until `target` records; each instance is ingested once and goes to one or two
    partners (routed, prepared, outcome, receipt), or is quarantined (about 0.5%)."""
    rng = random.Random(seed)
    orgs = [f"org-{i:03d}" for i in range(100)]
    partners = [f"partner-{i:02d}" for i in range(50)]
    deid_partners = set(partners[::3])  # research / AI partners get de-identified copies
    plan.orgs = orgs
    names, weights = list(MODALITIES), [m[0] for m in MODALITIES.values()]
    # Mean records per study (~6.3 per instance, ~90 instances): spread the studies over 30 days.
    mean_gap_ms = DAYS * 86_400_000 / max(1, target / 560)
    at_ms = int(START.timestamp() * 1000)
    n = 0
    while plan.records < target:
        n += 1
        at_ms += int(rng.expovariate(1 / mean_gap_ms))
        modality = rng.choices(names, weights)[0]
        _share, (low, high), size = MODALITIES[modality]
        org = orgs[min(99, int(rng.paretovariate(1.2)) - 1)] if rng.random() < 0.5 else rng.choice(orgs)
        dests = rng.sample(partners, 2 if rng.random() < 0.3 else 1)
        study = f"1.2.826.0.1.3680043.10.{n}"
        plan.studies.append(study)
        for partner in dests:
            if partner in deid_partners:
                plan.copies.append(_uid_225(study))
        for i in range(rng.randint(low, high)):
            if plan.records >= target:
                break
            t = at_ms + i * 200
            sop = f"{study}.1.{i}"
            ref = pb.InstanceRef(
                study_instance_uid=study,
                series_instance_uid=f"{study}.1",
                sop_instance_uid=sop,
                sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                modality=modality,
            )
            ingested = pb.InstanceIngested(
                meta=pb.EventMeta(event_id=event_id("ingested", sop), occurred_at_ms=t, ingested_at_ms=t),
                instance=ref,
                blob=pb.BlobRef(sha256=hashlib.sha256(sop.encode()).hexdigest(), size=size),
                source_org=org,
                channel="c-store",
            )
            yield event_message(topics.ingested, ingested, study)
            plan.records += 1
            if rng.random() < 0.005:
                q = pb.Quarantined(
                    meta=pb.EventMeta(event_id=event_id("quarantined", sop), occurred_at_ms=t + 30, ingested_at_ms=t),
                    stage=rng.choice(["routing", "deid"]),
                    reason=rng.choice(["no-route", "burned-in-annotation", "missing-uid"]),
                    source_org=org,
                    instance=ref,
                )
                yield event_message(topics.quarantine, q, study)
                plan.records += 1
                continue
            for partner in dests:
                yield from _destination(topics, rng, ref, org, partner, partner in deid_partners, t, size)
                plan.records += 4


def _destination(
    topics: Topics, rng: random.Random, ref: pb.InstanceRef, org: str, partner: str, deid: bool, t: int, size: int
) -> Iterator[OutgoingMessage]:
    sop, study = ref.sop_instance_uid, ref.study_instance_uid
    delivered_as = pb.InstanceRef()
    delivered_as.CopyFrom(ref)
    if deid:
        delivered_as.study_instance_uid = _uid_225(study)
        delivered_as.series_instance_uid = _uid_225(ref.series_instance_uid)
        delivered_as.sop_instance_uid = _uid_225(sop)
    profile = "research-basic" if deid else ""

    def meta(kind: str, at: int) -> pb.EventMeta:
        return pb.EventMeta(event_id=event_id(kind, sop, partner), occurred_at_ms=at, ingested_at_ms=t)

    ok = rng.random() > 0.02
    yield event_message(
        topics.routed,
        pb.InstanceRouted(
            meta=meta("routed", t + 40),
            instance=ref,
            source_org=org,
            route_id=f"route-{partner}",
            partner_id=partner,
            profile=profile,
            profile_version=3 if deid else 0,
        ),
        study,
    )
    yield event_message(
        topics.prepared,
        pb.InstancePrepared(
            meta=meta("prepared", t + 250),
            source_instance=ref,
            instance=delivered_as,
            blob=pb.BlobRef(sha256="ab" * 32, size=size),
            source_org=org,
            route_id=f"route-{partner}",
            partner_id=partner,
            profile=profile,
            profile_version=3 if deid else 0,
            deidentified=deid,
        ),
        study,
    )
    yield event_message(
        topics.outcomes,
        pb.DeliveryOutcome(
            meta=meta("outcome", t + 400),
            source_instance=ref,
            instance=delivered_as,
            source_org=org,
            route_id=f"route-{partner}",
            partner_id=partner,
            profile=profile,
            status=pb.DELIVERY_STATUS_DELIVERED if ok else pb.DELIVERY_STATUS_FAILED,
            topic=topics.partner(partner),
        ),
        study,
    )
    stored_at = t + 400 + int(rng.lognormvariate(8.0, 1.2))  # ~3 s median, long tail
    yield event_message(
        topics.receipts(partner),
        pb.DeliveryReceipt(
            meta=pb.EventMeta(event_id=event_id("receipt", sop, partner), occurred_at_ms=stored_at, ingested_at_ms=t),
            delivery_id=event_id("delivery", sop, partner),
            instance=delivered_as,
            status=pb.STORE_STATUS_STORED if ok else pb.STORE_STATUS_FAILED,
            target_kind="dicom",
            attempts=1,
            stored_at_ms=stored_at,
        ),
        delivered_as.study_instance_uid,
    )


def serve_without_log(
    settings: AuditSettings, stop: threading.Event, on_ready: Callable[[AuditEndpoints], None]
) -> None:
    """The audit consumer and HTTP API as services.audit.main.serve runs them, minus the tamper-evident
    log's sink: to tell the record store's share of the ingest time from the log's."""
    client, db = connect(settings)
    try:
        store = MongoAuditStore(db[settings.audit_collection])
        store.ensure_indexes()
        http = HttpServer(create_app(store, None), settings.http_host, settings.http_port, name="audit-http")
        http.start()
        try:

            def build_handler(_producer: BusProducer, topics: Topics) -> Handler:
                return AuditHandler(store, topics)

            def ready(control: ControlServer) -> None:
                on_ready(AuditEndpoints(http_port=http.port, grpc_port=control.port))

            run_stage(
                settings,
                audit_stage_spec(Topics(settings.topic_prefix)),
                build_handler,
                control_auth(db, settings.control_bootstrap_token_file),
                stop=stop,
                on_ready=ready,
            )
        finally:
            http.stop()
    finally:
        client.close()


def p95(samples: list[float]) -> float:
    return round(statistics.quantiles(samples, n=20, method="inclusive")[18], 1) if len(samples) > 1 else samples[0]


@dataclass
class Servers:
    kafka: str
    mongo: str
    procs: list[devstack.ManagedProcess]
    root: Path | None

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)


def start_servers() -> Servers:
    kafka, mongo = os.environ.get("IMX_BENCH_KAFKA"), os.environ.get("IMX_BENCH_MONGO")
    if kafka and mongo:
        return Servers(kafka, mongo, [], None)
    root = Path(tempfile.mkdtemp(prefix="bench-audit-"))
    if os.geteuid() == 0:
        root.chmod(0o755)  # PostgreSQL runs as its own user and must reach its folder
    procs: list[devstack.ManagedProcess] = []
    try:
        port, controller, mongo_port, pg_port = devstack.free_ports(4)
        procs.append(devstack.start_kafka(port, controller, root / "kafka", root, die_with_parent=True))
        cluster = devstack.PostgresCluster(pg_port, root / "postgres")
        procs.append(devstack.start_postgres(pg_port, cluster.data_dir, root, die_with_parent=True))
        procs.append(devstack.start_ferretdb(mongo_port, root / "ferretdb", root, cluster, die_with_parent=True))
    except BaseException:
        Servers("", "", procs, root).stop()
        raise
    return Servers(procs[0].endpoint, procs[-1].endpoint, procs, root)


def publish(servers: Servers, topics: Topics, target: int, plan: Plan, partitions: int) -> float:
    ensure_topics(
        servers.kafka, [*topics.pipeline(), *(topics.receipts(f"partner-{i:02d}") for i in range(50))], partitions
    )
    producer = BusProducer(servers.kafka)
    started = time.monotonic()
    try:
        chunk: list[OutgoingMessage] = []
        for message in journeys(topics, target, plan):
            chunk.append(message)
            if len(chunk) >= 20_000:
                producer.publish(chunk, timeout_s=300)
                chunk = []
        producer.publish(chunk, timeout_s=300)
    finally:
        producer.close()
    return time.monotonic() - started


def _timed(client: httpx.Client, url: str, params: dict[str, str] | None = None) -> float:
    t0 = time.perf_counter()
    response = client.get(url, params=params)
    elapsed = (time.perf_counter() - t0) * 1000
    response.raise_for_status()
    return elapsed


def queries(client: httpx.Client, plan: Plan, rng: random.Random, n: int) -> dict[str, float]:
    trail = [_timed(client, f"/audit/studies/{rng.choice(plan.studies)}") for _ in range(n)]
    copies = [_timed(client, f"/audit/studies/{rng.choice(plan.copies)}") for _ in range(n // 4)] if plan.copies else []
    month = {"since": START.isoformat(), "until": (START + timedelta(days=DAYS)).isoformat()}
    months = [_timed(client, "/audit/volumes", {"by": "org", "key": rng.choice(plan.orgs), **month}) for _ in range(n)]
    pages = []
    for _ in range(n):
        since = START + timedelta(minutes=rng.randrange(DAYS * 24 * 60 - 60))
        window = {"since": since.isoformat(), "until": (since + timedelta(hours=1)).isoformat(), "limit": "100"}
        pages.append(_timed(client, "/audit/events", window))
    turnaround = [_timed(client, "/audit/turnaround", {"partner": "partner-07", **month}) for _ in range(n // 4)]
    return {
        "trail_p95_ms": p95(trail),
        "trail_copy_p95_ms": p95(copies) if copies else 0.0,
        "month_aggregate_p95_ms": p95(months),
        "events_page_p95_ms": p95(pages),
        "turnaround_month_p95_ms": p95(turnaround),
    }


def chain_lengths(mongo_uri: str, settings: AuditSettings, plan: Plan, rng: random.Random) -> dict[str, float]:
    """Pages per study chain and per minute chain (each page one `_id` read), for sampled keys."""
    mongo: MongoClient[dict[str, Any]] = MongoClient(mongo_uri)
    pages = mongo[settings.mongo_db][f"{settings.audit_collection}_pages"]

    def length(key: str) -> int:
        n = 0
        while pages.find_one({"_id": f"{key}#{n}"}, {"_id": 1}) is not None:
            n += 1
        return n

    try:
        studies = [length(f"s:{rng.choice(plan.studies)}") for _ in range(30)]
        start_ms = int(START.timestamp() * 1000)
        minutes = [length(f"m:{start_ms + rng.randrange(DAYS * 1440) * 60_000}") for _ in range(30)]
    finally:
        mongo.close()
    return {
        "study_pages_median": statistics.median(studies),
        "study_pages_max": max(studies),
        "minute_pages_median": statistics.median(minutes),
    }


def counted(store: MongoAuditStore) -> int:
    """Records counted so far, read from the store's counters in this process: the summary's own reads,
    without an HTTP request and an access-log entry appended to the tamper-evident log every second
    (7.4% of the process's CPU during ingest, profiled)."""
    return sum(store.summary().events_by_type.values())


def _cpu_s(servers: Servers) -> dict[str, float]:
    """CPU seconds so far of this process (the audit service and the bench's poll) and of the servers
    it started (PostgreSQL with its per-connection processes); none for servers it did not start."""
    own = os.times()
    figures = {"bench": own.user + own.system}
    for proc in servers.procs:
        figures[proc.name] = proc_cpu.tree_cpu_seconds(proc.pid)
    return figures


class WriteCounter(monitoring.CommandListener):
    """Round trips to the document store and the documents they write, per command and collection, while
    `counting` is set: what one record costs FerretDB (each round trip) and PostgreSQL (each row written)."""

    def __init__(self) -> None:
        self.counting = False
        self.commands: dict[str, int] = {}
        self.documents: dict[str, int] = {}
        self._lock = threading.Lock()

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if not self.counting:
            return
        name = event.command_name
        target = event.command.get(name)
        key = f"{name}:{target}" if isinstance(target, str) else name
        written = len(
            event.command.get("documents") or event.command.get("updates") or event.command.get("deletes") or []
        )
        with self._lock:
            self.commands[key] = self.commands.get(key, 0) + 1
            if written:
                self.documents[key] = self.documents.get(key, 0) + written

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass

    def per_record(self, records: int) -> dict[str, float]:
        return {
            "ingest_store_commands_per_record": round(sum(self.commands.values()) / records, 4),
            "ingest_store_documents_written_per_record": round(sum(self.documents.values()) / records, 4),
        }


def run(target: int, partitions: int, max_batch: int, samples: int, with_log: bool = True) -> dict[str, object]:
    servers = start_servers()
    work = Path(tempfile.mkdtemp(prefix="bench-audit-work-"))
    stop = threading.Event()
    threads: list[threading.Thread] = []
    clients: list[MongoClient[dict[str, Any]]] = []
    try:
        suffix = os.urandom(3).hex()
        topics = Topics(f"bench-audit-{suffix}.")
        plan = Plan()
        publish_s = publish(servers, topics, target, plan, partitions)
        print(f"published {plan.records} events in {publish_s:.1f} s", flush=True)
        settings = AuditSettings(
            kafka_bootstrap=servers.kafka,
            mongo_uri=servers.mongo,
            mongo_db=f"bench-audit-{suffix}",
            topic_prefix=topics.prefix,
            topic_partitions=partitions,
            http_port=0,
            grpc_port=0,
            require_api_key=False,
            max_batch=max_batch,
            signing_key_file=work / "signing.key",
        )
        ready: list[AuditEndpoints] = []
        writes = WriteCounter()
        monitoring.register(writes)  # clients made from here on report to it: the service's too
        mongo_client, mongo_db = connect(settings)
        clients.append(mongo_client)
        progress = MongoAuditStore(mongo_db[settings.audit_collection])
        cpu_before = _cpu_s(servers)
        writes.counting = True
        started = time.monotonic()
        service = serve if with_log else serve_without_log
        thread = threading.Thread(target=service, args=(settings, stop, ready.append), name="audit", daemon=True)
        thread.start()
        threads.append(thread)
        while not ready:
            if not thread.is_alive():
                raise RuntimeError("the audit service ended before it was ready")
            time.sleep(0.1)
        logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per timed request otherwise
        client = httpx.Client(base_url=f"http://127.0.0.1:{ready[0].http_port}", timeout=60)
        seen, last_print = 0, 0.0
        while seen < plan.records:
            time.sleep(1.0)
            seen = counted(progress)
            if time.monotonic() - last_print > 15:
                last_print = time.monotonic()
                rate = seen / (time.monotonic() - started)
                print(f"  {seen} records counted, {rate:.0f}/s, load {os.getloadavg()[0]:.1f}", flush=True)
        ingest_s = time.monotonic() - started
        cpu_during = {name: s - cpu_before.get(name, 0.0) for name, s in _cpu_s(servers).items()}
        writes.counting = False
        for key in sorted(writes.commands, key=lambda k: -writes.commands[k]):
            per = writes.commands[key] / plan.records
            docs = writes.documents.get(key, 0) / plan.records
            print(f"  {key:<40} {per:8.4f} round trips, {docs:8.4f} documents per record", flush=True)
        figures = queries(client, plan, random.Random(11), samples)
        client.close()
        figures.update(chain_lengths(servers.mongo, settings, plan, random.Random(13)))
        return {
            "records": plan.records,
            "studies": len(plan.studies),
            "publish_s": round(publish_s, 1),
            "ingest_s": round(ingest_s, 1),
            "ingest_per_s": round(plan.records / ingest_s),
            # CPU per record during ingest, µs: the bench process (audit service + poll) and each server
            **{f"ingest_cpu_us_per_record_{name}": round(s * 1e6 / plan.records, 1) for name, s in cpu_during.items()},
            **writes.per_record(plan.records),
            **figures,
            "tamper_log": with_log,
            "max_batch": max_batch,
            "partitions": partitions,
            "load_avg_1m": round(os.getloadavg()[0], 2),
        }
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
        for mongo_client in clients:
            mongo_client.close()
        servers.stop()
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--records", type=int, default=int(os.environ.get("IMX_BENCH_AUDIT_RECORDS", "1000000")))
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--max-batch", type=int, default=2000, help="IMX_MAX_BATCH of the audit service")
    parser.add_argument("--samples", type=int, default=200, help="requests per timed query")
    parser.add_argument(
        "--without-log", action="store_true", help="the consumer without the tamper-evident log's sink (diagnosis)"
    )
    args = parser.parse_args()
    result = run(args.records, args.partitions, args.max_batch, args.samples, with_log=not args.without_log)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
