"""What partners are still owed, and the purge of delivered records, asked of a store with many deliveries
(services/delivery/delivered.py, record_retention.py).

`python -m tools.bench_delivered [--deliveries 100000] [--in-flight 200]` against a running MongoDB-wire
server (`make up`'s FerretDB unless IMX_MONGO_URI says otherwise), in a database of its own that it drops
at the end. Records the deliveries in batches of 200, 100 instances to a study, every one but the last
`--in-flight` reported stored; asks what is owed three times, by the owed flag and by the scan of every
delivery it replaced; then purges the records as the retention would, and says how long that took.
"""

from __future__ import annotations

import argparse
import os
import time
import uuid

from pymongo import MongoClient

from services.common.settings import DAY_MS
from services.delivery.delivered import INSTANCES, DeliveredInstance, DeliveredObjects, StoredReceipt
from services.delivery.purge_state import PurgeState
from services.delivery.record_retention import purge_records

BATCH = 200
PER_STUDY = 100
DAY0 = 20_000  # days since the epoch: every delivery is on this day
RETENTION_DAYS = 90


def delivery(n: int) -> DeliveredInstance:
    study = f"2.25.{n // PER_STUDY}"
    at_ms = DAY0 * DAY_MS + n
    return DeliveredInstance(
        "lab", study, f"{study}.1", f"{study}.1.{n}", "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1",
        f"{n:064x}", 500, f"d{n}", delivered_at_ms=at_ms, ingested_at_ms=at_ms,
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deliveries", type=int, default=100_000)
    parser.add_argument("--in-flight", type=int, default=200, help="deliveries not reported stored")
    args = parser.parse_args()
    client: MongoClient = MongoClient(os.environ.get("IMX_MONGO_URI", "mongodb://127.0.0.1:27117/"))
    name = f"bench-delivered-{uuid.uuid4().hex[:8]}"
    db = client[name]
    try:
        delivered = DeliveredObjects(db)
        delivered.ensure_indexes()
        started = time.monotonic()
        stored_below = args.deliveries - args.in_flight
        for first in range(0, args.deliveries, BATCH):
            batch = [delivery(n) for n in range(first, min(args.deliveries, first + BATCH))]
            delivered.record(batch)
            delivered.mark(
                [
                    StoredReceipt(
                        "lab", d.study_uid, d.series_uid, d.sop_uid, "stored", d.delivered_at_ms + 5, d.delivery_id
                    )
                    for d in batch
                    if int(d.delivery_id[1:]) < stored_below
                ]
            )
        delivered.settle_receipts()
        took_s = time.monotonic() - started
        print(f"recorded {args.deliveries:,} deliveries, {args.in_flight:,} not stored, in {took_s:.1f} s")
        for _ in range(3):
            began = time.perf_counter()
            owed = delivered.unstored_blobs()
            flag_s = time.perf_counter() - began
            began = time.perf_counter()
            scanned = {doc["sha256"] for doc in db[INSTANCES].find({"stored_at_ms": {"$exists": False}}, {"sha256": 1})}
            scan_s = time.perf_counter() - began
            assert owed == scanned, "the flag and the scan disagree"
            print(f"owed {len(owed):,}: by the flag {flag_s * 1000:,.0f} ms, by the scan {scan_s * 1000:,.0f} ms")
        began, cpu = time.perf_counter(), time.process_time()
        forgotten, kept = purge_records(
            delivered, PurgeState(db), RETENTION_DAYS, lambda: (DAY0 + RETENTION_DAYS + 1) * DAY_MS
        )
        took_s = time.perf_counter() - began
        left = db[INSTANCES].count_documents({})
        print(
            f"record purge: {forgotten:,} studies forgotten, {kept:,} kept as owed, {left:,} instances left, "
            f"{took_s:.1f} s ({took_s / max(1, args.deliveries - left) * 1000:.2f} ms per instance forgotten; "
            f"this process's CPU {time.process_time() - cpu:.1f} s)"
        )
    finally:
        client.drop_database(name)
        client.close()


if __name__ == "__main__":
    main()
