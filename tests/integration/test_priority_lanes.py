"""Urgent work overtakes a bulk backlog in every stage after routing: with 5,000 bulk instances
queued, a 50-instance urgent CT study is stored in the partner's PACS (here a folder, through the real
gateway) within 5 s of its last instance being accepted, while most of the bulk work still waits.

The real deid and delivery stages (and delivery's DICOMweb API, which the gateway fetches from) run
in threads against the test's Kafka and FerretDB. The backlog is queued cheaply: routed events as
routing would publish them for a pass-through route, the bulk ones all pointing at one small blob
(the store is content-addressed)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
from pymongo.database import Database

from services.common.blob_store import LocalBlobStore
from services.common.bus import BusProducer, ensure_topics
from services.common.dicom.part10 import dataset_to_bytes
from services.common.dicom.synthetic import generate_study
from services.common.events import event_id, event_message, now_ms
from services.common.lanes import lane_for
from services.common.stores.partners import Partner, PartnerStore
from services.common.topics import Topics
from services.deid.main import serve as serve_deid
from services.deid.settings import DeidSettings
from services.delivery.main import serve as serve_delivery
from services.delivery.settings import DeliverySettings
from services.gateway.runner import GatewaySettings, KafkaSignIn, run_gateway
from services.gateway.targets import parse_target
from services.proto_gen.imx.v1 import events_pb2
from tests.integration.bus_helpers import read_all
from tests.waiting import wait_for

BULK = 5000
URGENT = 50
PARTITIONS = 3
# Delivery records each batch's deliveries in MongoDB before publishing them; on FerretDB a batch of
# 150 upserts stalls for minutes (120: 0.4 s), so the stages here take 50 at a time. A lower lane delays
# an urgent event by at most the batch in flight at each stage.
MAX_BATCH = 50


def _routed(
    blob: events_pb2.BlobRef, study: str, series: str, sop: str, modality: str, partner_id: str, priority: int
) -> events_pb2.InstanceRouted:
    return events_pb2.InstanceRouted(
        meta=events_pb2.EventMeta(event_id=event_id("routed", sop), occurred_at_ms=now_ms(), ingested_at_ms=now_ms()),
        instance=events_pb2.InstanceRef(
            study_instance_uid=study,
            series_instance_uid=series,
            sop_instance_uid=sop,
            sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
            transfer_syntax_uid="1.2.840.10008.1.2.1",
            modality=modality,
        ),
        blob=blob,
        source_org="trust-a",
        route_id=f"to-{partner_id}",
        partner_id=partner_id,
        priority=priority,  # type: ignore[arg-type]
    )


@contextmanager
def _in_thread(name: str, target: Callable[[threading.Event], object]) -> Iterator[None]:
    stop = threading.Event()
    failures: list[BaseException] = []

    def run() -> None:
        try:
            target(stop)
        except BaseException as error:  # surfaced by the test, not lost in the thread
            failures.append(error)

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(60)
    assert not thread.is_alive(), f"{name} did not stop"
    assert not failures, f"{name} failed: {failures[0]!r}"


def _started(serve: Callable[..., None], settings: object) -> Callable[[threading.Event], None]:
    ready = threading.Event()

    def target(stop: threading.Event) -> None:
        serve(settings, stop, lambda _server: ready.set())

    target.ready = ready  # type: ignore[attr-defined]
    return target


def _count(root: Path) -> int:
    return sum(1 for _ in root.rglob("*.dcm")) if root.is_dir() else 0


@pytest.mark.timeout(180)
def test_an_urgent_study_overtakes_a_bulk_backlog_to_the_partners_pacs(
    kafka_bootstrap: str, mongo_uri: str, db: Database, tmp_path: Path
) -> None:
    topics = Topics(f"{db.name}.")
    partner_id = db.name
    common = {
        "kafka_bootstrap": kafka_bootstrap,
        "mongo_uri": mongo_uri,
        "mongo_db": db.name,
        "blob_dir": tmp_path / "blobs",
        "topic_prefix": topics.prefix,
        "topic_partitions": PARTITIONS,
        "grpc_port": 0,
        "log_level": "WARNING",
        "max_batch": MAX_BATCH,
    }
    deid = DeidSettings(**common)  # type: ignore[arg-type]
    delivery = DeliverySettings(
        **common,  # type: ignore[arg-type]
        http_port=0,
        partner_topic_partitions=PARTITIONS,
        study_quiet_s=3600,
        blob_gc_interval_s=0,
    )
    partners = PartnerStore(db)
    partners.add(Partner(partner_id))
    ensure_topics(
        kafka_bootstrap,
        [*topics.pipeline(), *topics.partner_lanes(partner_id), topics.receipts(partner_id)],
        PARTITIONS,
    )
    pacs = tmp_path / "pacs"
    pacs.mkdir()
    gateway = GatewaySettings(
        partner_id=partner_id,
        target=parse_target(pacs.as_uri()),
        kafka=KafkaSignIn(kafka_bootstrap),
        dicomweb_key=partners.issue_dicomweb_key(partner_id),
        state_dir=tmp_path / "gateway-state",
        topics=topics,
    )

    blobs = LocalBlobStore(deid.blob_dir)
    small = dataset_to_bytes(next(iter(generate_study(3, "MR", 1, "bulk-source"))))
    bulk_blob = events_pb2.BlobRef(sha256=blobs.put(small), size=len(small))
    urgent_study = list(generate_study(11, "CT", URGENT, "stroke-unit"))
    urgent_uid = str(urgent_study[0].StudyInstanceUID)
    urgent_events = []
    for ds in urgent_study:
        data = dataset_to_bytes(ds)
        blob = events_pb2.BlobRef(sha256=blobs.put(data), size=len(data))
        urgent_events.append(
            _routed(
                blob,
                urgent_uid,
                str(ds.SeriesInstanceUID),
                str(ds.SOPInstanceUID),
                "CT",
                partner_id,
                events_pb2.PRIORITY_CLASS_URGENT,
            )
        )
    bulk_events = [
        _routed(
            bulk_blob,
            f"2.25.{n + 1}",
            f"2.25.{n + 1}.1",
            f"2.25.{n + 1}.1.1",
            "MR",
            partner_id,
            events_pb2.PRIORITY_CLASS_BULK,
        )
        for n in range(BULK)
    ]  # single-image studies (a research set of plain films): delivery's per-study manifest update,
    # slow on FerretDB when a batch adds many instances to one study, stays out of the measurement

    def messages(events: list[events_pb2.InstanceRouted]) -> list:  # type: ignore[type-arg]
        return [
            event_message(topics.lane(topics.routed, lane_for(e.priority)), e, e.instance.study_instance_uid)
            for e in events
        ]

    urgent_folder = pacs / urgent_uid
    producer = BusProducer(kafka_bootstrap)
    deid_stage = _started(serve_deid, deid)
    delivery_stage = _started(serve_delivery, delivery)
    with ExitStack() as stack:
        stack.callback(producer.close)
        stack.enter_context(_in_thread("deid", deid_stage))
        stack.enter_context(_in_thread("delivery", delivery_stage))
        stack.enter_context(_in_thread("gateway", lambda stop: run_gateway(gateway, stop)))
        for stage in (deid_stage, delivery_stage):
            assert stage.ready.wait(60), "a stage did not start"  # type: ignore[attr-defined]

        producer.publish(messages(bulk_events))
        # The backlog reaches every stage: the gateway is storing bulk work when the urgent study arrives.
        wait_for(lambda: _count(pacs) >= 20, 60, "bulk work to reach the partner's PACS", interval_s=0.02)

        producer.publish(messages(urgent_events))
        accepted = time.monotonic()
        accepted_ms = now_ms()
        wait_for(lambda: _count(urgent_folder) >= URGENT, 30, "the urgent study to be stored", interval_s=0.02)
        elapsed = time.monotonic() - accepted
        bulk_stored = _count(pacs) - URGENT
        print(f"urgent study stored {elapsed:.2f} s after its last instance; bulk stored meanwhile {bulk_stored}")
        for lane in (topics.lane(topics.prepared, "urgent"), topics.lane(topics.partner(partner_id), "urgent")):
            last = max(r.timestamp for r in read_all(kafka_bootstrap, lane, URGENT, timeout_s=10))
            print(f"  last urgent event on {lane}: +{(last - accepted_ms) / 1000:.2f} s")

    assert _count(urgent_folder) == URGENT
    # Its latency is printed, not asserted (speed is the bench's business); what is asserted is the order.
    assert bulk_stored < BULK / 2, "most of the bulk work was still queued: it was overtaken, not finished first"
