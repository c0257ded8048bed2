"""A partner for each test (its own topics, Kafka user and ACLs on the SASL listener), synthetic
instances served over HTTP, deliveries published the way delivery publishes them, receipts read back
through the internal listener, and the gateway run in a thread."""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
from kafka import KafkaConsumer
from kafka.structs import TopicPartition
from pydicom.dataset import FileDataset

from services.common.bus import BusProducer, ensure_topics
from services.common.dicom.part10 import dataset_to_bytes
from services.common.dicom.synthetic import generate_study
from services.common.events import event_id, event_message, now_ms
from services.common.kafka_access import PartnerAccess
from services.common.messages import OutgoingMessage
from services.common.topics import Topics
from services.gateway.policy import RetryPolicy
from services.gateway.runner import GatewaySettings, KafkaSignIn, run_gateway
from services.gateway.targets import parse_target
from services.gateway.worker import Counters
from services.proto_gen.imx.v1 import events_pb2
from tests.integration.gateway.peers import RetrievalServer

PARTITIONS = 2


@dataclass(frozen=True)
class Instance:
    study: str
    series: str
    sop: str
    sop_class: str
    transfer_syntax: str
    data: bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


def instance_of(ds: FileDataset) -> Instance:
    return Instance(
        str(ds.StudyInstanceUID),
        str(ds.SeriesInstanceUID),
        str(ds.SOPInstanceUID),
        str(ds.SOPClassUID),
        str(ds.file_meta.TransferSyntaxUID),
        dataset_to_bytes(ds),
    )


@pytest.fixture(scope="session")
def ct_study() -> list[Instance]:
    """One synthetic CT study of 12 instances (512 x 512, ~0.5 MB each), two series."""
    return [instance_of(ds) for ds in generate_study(7, "CT", 12, "gateway-test")]


@dataclass
class Partner:
    partner_id: str
    topics: Topics
    username: str
    password: str
    partner_bootstrap: str
    internal_bootstrap: str
    server: RetrievalServer
    state_dir: Path
    published: list[events_pb2.PartnerDelivery] = field(default_factory=list)

    def url_of(self, instance: Instance) -> str:
        return f"/studies/{instance.study}/series/{instance.series}/instances/{instance.sop}"

    def delivery(self, instance: Instance, sha256: str | None = None) -> events_pb2.PartnerDelivery:
        return events_pb2.PartnerDelivery(
            meta=events_pb2.EventMeta(
                event_id=event_id("delivery", self.partner_id, instance.sop),
                occurred_at_ms=now_ms(),
                ingested_at_ms=now_ms() - 1000,
            ),
            instance=events_pb2.InstanceRef(
                study_instance_uid=instance.study,
                series_instance_uid=instance.series,
                sop_instance_uid=instance.sop,
                sop_class_uid=instance.sop_class,
                transfer_syntax_uid=instance.transfer_syntax,
                modality="CT",
            ),
            blob=events_pb2.BlobRef(sha256=sha256 or instance.sha256, size=len(instance.data)),
            partner_id=self.partner_id,
            retrieval_url=self.server.base + self.url_of(instance),
        )

    def serve(self, instances: list[Instance]) -> None:
        for instance in instances:
            self.server.objects[self.url_of(instance)] = instance.data

    def publish(self, instances: list[Instance], study_complete: bool = False) -> list[events_pb2.PartnerDelivery]:
        """Serve the instances and publish one PartnerDelivery each (and a StudyComplete after them)."""
        self.serve(instances)
        deliveries = [self.delivery(i) for i in instances]
        topic = self.topics.partner(self.partner_id)
        messages = [event_message(topic, d, d.instance.study_instance_uid) for d in deliveries]
        if study_complete:
            study = events_pb2.StudyComplete(
                meta=events_pb2.EventMeta(event_id=event_id("study", self.partner_id, instances[0].study)),
                partner_id=self.partner_id,
                study_instance_uid=instances[0].study,
                count=len(deliveries),
                instances=[
                    events_pb2.ManifestEntry(
                        series_instance_uid=d.instance.series_instance_uid,
                        sop_instance_uid=d.instance.sop_instance_uid,
                        sha256=d.blob.sha256,
                        size=d.blob.size,
                        delivery_id=d.meta.event_id,
                    )
                    for d in deliveries
                ],
            )
            messages.append(event_message(topic, study, instances[0].study))
        self.send(messages)
        self.published.extend(deliveries)
        return deliveries

    def publish_again(self, deliveries: list[events_pb2.PartnerDelivery]) -> None:
        """The same deliveries again, as a replay upstream publishes them (their ingest time carried)."""
        topic = self.topics.partner(self.partner_id)
        self.send([event_message(topic, d, d.instance.study_instance_uid) for d in deliveries])

    def send(self, messages: list[OutgoingMessage]) -> None:
        producer = BusProducer(self.internal_bootstrap)
        try:
            producer.publish(messages)
        finally:
            producer.close()

    def settings(self, target: str, **changes: object) -> GatewaySettings:
        settings = GatewaySettings(
            partner_id=self.partner_id,
            target=parse_target(target),
            kafka=KafkaSignIn(self.partner_bootstrap, self.username, self.password),
            dicomweb_key=self.server.key,
            state_dir=self.state_dir,
            topics=self.topics,
            policy=RetryPolicy(max_attempts=3, initial_s=0.1, cap_s=0.5, jitter_s=0.1),
            window=8,
        )
        return replace(settings, **changes)  # type: ignore[arg-type]

    def receipts(self, count: int, seconds: float = 20) -> list[events_pb2.DeliveryReceipt]:
        """The first `count` receipts on the partner's receipts topic (internal listener)."""
        topic = self.topics.receipts(self.partner_id)
        consumer = KafkaConsumer(bootstrap_servers=self.internal_bootstrap, enable_auto_commit=False)
        try:
            consumer.assign([TopicPartition(topic, p) for p in range(PARTITIONS)])
            consumer.seek_to_beginning()
            found: list[events_pb2.DeliveryReceipt] = []
            deadline = time.monotonic() + seconds
            while len(found) < count and time.monotonic() < deadline:
                for records in consumer.poll(timeout_ms=300).values():
                    for record in records:
                        assert dict(record.headers)["imx-event-type"] == b"DeliveryReceipt"
                        found.append(events_pb2.DeliveryReceipt.FromString(record.value))
            return found
        finally:
            consumer.close()


@pytest.fixture
def partner(kafka_bootstrap: str, kafka_partner_bootstrap: str, unique_name: str, tmp_path: Path) -> Iterator[Partner]:
    topics = Topics(f"{unique_name}.")
    partner_id = unique_name
    ensure_topics(kafka_bootstrap, [*topics.partner_lanes(partner_id), topics.receipts(partner_id)], PARTITIONS)
    access = PartnerAccess(kafka_bootstrap)
    credentials = access.grant(partner_id, topics.partner(partner_id), topics.receipts(partner_id))
    server = RetrievalServer(secrets.token_urlsafe(16))
    try:
        yield Partner(
            partner_id,
            topics,
            credentials.username,
            credentials.password,
            kafka_partner_bootstrap,
            kafka_bootstrap,
            server,
            tmp_path / "gateway-state",
        )
    finally:
        server.close()
        access.revoke(partner_id)


@contextmanager
def gateway_thread(settings: GatewaySettings) -> Iterator[tuple[threading.Event, Future[Counters]]]:
    """The gateway running in a thread; stopped (and its result awaited) when the block ends."""
    stop = threading.Event()
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(run_gateway, settings, stop)
        try:
            yield stop, future
        finally:
            stop.set()
            future.result(timeout=60)


def wait_until(condition: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)
