"""Delivery started while the broker is away serves partners at once, and their retrievals are recorded
once the broker answers. Before, its retrieval events' producer was made before the API opened: kafka-python
gave up after 30 s, the process ended, and no partner was served until the broker came back (in the chart,
a restart loop whose back-off outlasted the outage)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest
from pymongo.database import Database

from services.common.bus import ensure_topics
from services.common.stores.partners import Partner, PartnerStore
from services.common.topics import Topics
from services.delivery.main import serve
from services.delivery.settings import DeliverySettings
from services.proto_gen.imx.v1.events_pb2 import PartnerRetrieval
from tests.integration.bus_helpers import LateBroker, read_all
from tools.devstack import free_port

pytestmark = pytest.mark.integration


@pytest.mark.timeout(180)
def test_a_delivery_started_without_its_broker_serves_partners_and_records_them_once_it_answers(
    kafka_bootstrap: str, mongo_uri: str, db: Database, tmp_path: Path
) -> None:
    topics = Topics(f"{db.name}.")
    ensure_topics(kafka_bootstrap, [topics.access], partitions=1)
    partners = PartnerStore(db)
    partners.add(Partner("lab"))
    key = partners.issue_dicomweb_key("lab")
    broker_port, http_port = free_port(), free_port()
    settings = DeliverySettings(
        kafka_bootstrap=f"127.0.0.1:{broker_port}",  # nothing answers there yet
        mongo_uri=mongo_uri,
        mongo_db=db.name,
        blob_dir=tmp_path / "blobs",
        topic_prefix=topics.prefix,
        grpc_port=0,
        http_host="127.0.0.1",
        http_port=http_port,
        blob_gc_interval_s=0,
        retention_check_interval_s=0,
        record_retention_days=0,
        log_level="WARNING",
    )
    stop = threading.Event()
    failures: list[BaseException] = []

    def run() -> None:
        try:
            serve(settings, stop)
        except BaseException as error:  # surfaced below, not lost in the thread
            failures.append(error)

    service = threading.Thread(target=run, name="delivery", daemon=True)
    service.start()
    broker = LateBroker(broker_port, kafka_bootstrap)
    try:
        answered = None
        deadline = time.monotonic() + 20
        while answered is None and time.monotonic() < deadline and not failures:
            try:
                answered = httpx.get(
                    f"http://127.0.0.1:{http_port}/dicomweb/studies",
                    headers={"Authorization": f"Bearer {key}", "Accept": "application/dicom+json"},
                    timeout=5,
                )
            except httpx.TransportError:
                time.sleep(0.2)
        assert not failures, f"delivery ended: {failures[0]!r}"
        assert answered is not None, "the partner API did not open while the broker was away"
        assert answered.status_code in (200, 204), answered.text
        broker.open()  # the broker is back
        records = read_all(kafka_bootstrap, topics.access, 1, timeout_s=90)
        event = PartnerRetrieval()
        event.ParseFromString(records[0].value)
        assert (event.partner_id, event.action) == ("lab", "query")
    finally:
        stop.set()
        service.join(60)
        broker.close()
    assert not service.is_alive(), "delivery did not stop"
    assert not failures, f"delivery failed: {failures[0]!r}"
