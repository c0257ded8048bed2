"""What the audit log's tamper evidence costs per record: append N audit records (5 per instance, as the
pipeline produces them) in the consumer's batches to the Merkle log on FerretDB/PostgreSQL, then verify;
or, with --purge, what retention costs: the records stored as the consumer stores them (pages, counters,
marks), spread over `--days` UTC days, then purged past the retention age, records and keyed documents.

    .venv/bin/python -m tools.bench_audit_log --records 100000 [--mongo-uri URI] [--verify]
    .venv/bin/python -m tools.bench_audit_log --records 50000 --purge [--days 2] [--trace-memory]

Starts its own PostgreSQL + FerretDB (as the tests do) unless --mongo-uri is given. Prints one JSON line:
records, batch, the stored records' own insert rate, the log's append rate and ms per record, the log's
documents per record, its bytes per record (collStats, when the server answers it), verify's rate;
with --purge: the record purge's and the keyed purge's rates, and with --trace-memory the keyed purge's
peak of Python allocations (tracemalloc, which slows it: take its time from a run without).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import tracemalloc
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pymongo import MongoClient

from services.audit.keyed_retention import KeyedPurge
from services.audit.log_verify import CollectionRecords, verify_log
from services.audit.records import AuditRecord, build_record
from services.audit.retention import DAY_MS, CollectionRecordDeleter, Retention
from services.audit.signing import Signer
from services.audit.store import MongoAuditStore
from services.audit.tamper_log import StoredTree, TamperLog, TamperLogSink
from services.common.topics import Topics
from tests.unit.audit.builders import T0_MS, Instance, incoming, journey
from tools import devstack


def records(count: int, spacing_ms: int = 1) -> list[AuditRecord]:
    """`count` records of whole journeys (5 records each), the journeys `spacing_ms` apart from T0_MS."""
    topics, now = Topics("bench."), datetime.now(UTC)
    out: list[AuditRecord] = []
    n = 0
    while len(out) < count:
        instance = Instance(study=f"1.2.826.0.1.{n // 100}", series=f"1.2.826.0.1.{n // 100}.1", sop=f"1.2.826.0.1.{n}")
        for message in journey(topics, instance, t0_ms=T0_MS + n * spacing_ms):
            out.append(build_record(incoming(message), topics, now))
        n += 1
    return out[:count]


def run(uri: str, count: int, batch: int, verify: bool) -> dict[str, Any]:
    client: MongoClient = MongoClient(uri, serverSelectionTimeoutMS=10_000)
    name = f"bench-log-{uuid.uuid4().hex[:6]}"
    db = client[name]
    try:
        data = records(count)
        began = time.perf_counter()
        for at in range(0, count, batch):
            db["audit_events"].insert_many([dict(r) for r in data[at : at + batch]], ordered=False)
        store_s = time.perf_counter() - began
        log = TamperLog(db["audit_log"], Signer.generate(), "bench", sth_every=10_000, sth_interval_s=60)
        log.open()
        began = time.perf_counter()
        for at in range(0, count, batch):
            log.append(data[at : at + batch])
        log.close()
        append_s = time.perf_counter() - began
        result: dict[str, Any] = {
            "records": count,
            "batch": batch,
            "records_insert_per_s": round(count / store_s),
            "log_append_per_s": round(count / append_s),
            "log_ms_per_record": round(append_s * 1000 / count, 3),
            "log_docs_per_record": round(db["audit_log"].estimated_document_count() / count, 2),
        }
        try:
            stats = db.command("collStats", "audit_log")
            result["log_bytes_per_record"] = round(int(stats.get("size", 0)) / count)
            result["log_storage_bytes_per_record"] = round(int(stats.get("storageSize", 0)) / count)
            records_stats = db.command("collStats", "audit_events")
            result["record_bytes"] = round(int(records_stats.get("size", 0)) / count)
        except Exception as error:  # collStats is optional on Mongo-wire servers
            result["collstats_error"] = type(error).__name__
        if verify:
            began = time.perf_counter()
            report = verify_log(StoredTree(db["audit_log"]), CollectionRecords(db["audit_events"]),
                                log.signer.public_key)  # fmt: skip
            verify_s = time.perf_counter() - began
            result.update(verify_ok=report.ok, verify_per_s=round(count / verify_s), verify_s=round(verify_s, 1))
        return result
    finally:
        client.drop_database(name)
        client.close()


def run_purge(uri: str, count: int, batch: int, days: int, trace_memory: bool) -> dict[str, Any]:
    """Stores `count` records over `days` UTC days as the consumer does, then runs retention with its
    clock past their age: first the records (and their claims, and log chunks), then the keyed documents.
    `trace_memory`: the keyed purge's peak of Python allocations (tracemalloc; its time is then slower)."""
    client: MongoClient = MongoClient(uri, serverSelectionTimeoutMS=10_000)
    name = f"bench-purge-{uuid.uuid4().hex[:6]}"
    db = client[name]
    try:
        data = records(count, spacing_ms=max(1, days * DAY_MS * 5 // count))
        store = MongoAuditStore(db["audit_events"])
        store.ensure_indexes()
        log = TamperLog(db["audit_log"], Signer.generate(), "bench", sth_every=10_000, sth_interval_s=60)
        sink = TamperLogSink(log)
        log.open()
        began = time.perf_counter()
        for at in range(0, count, batch):
            store.insert(data[at : at + batch])
            sink.write(data[at : at + batch])
        log.close()
        store_s = time.perf_counter() - began
        later = time.time() + 3 * DAY_MS / 1000  # every record is past a one-day retention age
        deleter = CollectionRecordDeleter(db["audit_events"], db["audit_events_marks"])
        retention = Retention(
            log.signer, StoredTree(db["audit_log"]), deleter, 1, max_leaves=count, clock=lambda: later
        )
        began = time.perf_counter()
        purged = retention.purge()
        records_s = time.perf_counter() - began
        del data
        keyed = KeyedPurge(db["audit_events"])
        if trace_memory:
            tracemalloc.start()
        began = time.perf_counter()
        gone = keyed.purge(int(later * 1000) - DAY_MS)
        keyed_s = time.perf_counter() - began
        peak = tracemalloc.get_traced_memory()[1] if trace_memory else None
        tracemalloc.stop()
        keyed.close()
        left = {n: db[n].estimated_document_count() for n in ("audit_events", "audit_events_pages")}
        return {
            "records": count,
            "days": days,
            "store_per_s": round(count / store_s),
            "records_purged": purged.deleted,
            "record_purge_per_s": round(purged.deleted / records_s),
            "keyed_days_purged": len(gone),
            "keyed_purge_s": round(keyed_s, 1),
            "keyed_purge_records_per_s": round(count / keyed_s),
            **({"keyed_purge_traced_peak_mib": round(peak / 2**20, 1)} if peak is not None else {}),
            "left": left,
        }
    finally:
        client.drop_database(name)
        client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=200, help="records per consumer batch (IMX_MAX_BATCH)")
    parser.add_argument("--mongo-uri", default="")
    parser.add_argument("--verify", action="store_true")
    parser.add_argument("--purge", action="store_true", help="measure retention's purge instead")
    parser.add_argument("--days", type=int, default=2, help="with --purge: UTC days the records span")
    parser.add_argument("--trace-memory", action="store_true", help="with --purge: the keyed purge's peak")
    args = parser.parse_args()

    def measure(uri: str) -> dict[str, Any]:
        if args.purge:
            return run_purge(uri, args.records, args.batch, args.days, args.trace_memory)
        return run(uri, args.records, args.batch, args.verify)

    if args.mongo_uri:
        print(json.dumps(measure(args.mongo_uri)))
        return
    with tempfile.TemporaryDirectory(prefix="bench-audit-log-") as tmp:
        root = Path(tmp)
        mongo_port, postgres_port = devstack.free_ports(2)
        cluster = devstack.PostgresCluster(postgres_port, root / "postgres")
        procs = [devstack.start_postgres(postgres_port, cluster.data_dir, root, die_with_parent=True)]
        try:
            procs.append(devstack.start_ferretdb(mongo_port, root / "data", root, cluster, die_with_parent=True))
            print(json.dumps(measure(procs[-1].endpoint)))
        finally:
            for proc in reversed(procs):
                proc.stop()


if __name__ == "__main__":
    main()
