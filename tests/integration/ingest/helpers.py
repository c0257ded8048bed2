"""Shared by the ingest integration tests: a running ingest service and reading its topics."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest

from services.common.topics import Topics
from services.ingest.main import IngestEndpoints, serve
from services.ingest.settings import IngestSettings
from services.proto_gen.imx.v1 import events_pb2
from tests.integration.bus_helpers import read_to_end


def make_settings(kafka_bootstrap: str, mongo_uri: str, tmp_path_factory: pytest.TempPathFactory) -> IngestSettings:
    name = f"t-ingest-{uuid.uuid4().hex[:8]}"
    return IngestSettings(
        kafka_bootstrap=kafka_bootstrap,
        mongo_uri=mongo_uri,
        mongo_db=name,
        topic_prefix=f"{name}.",
        topic_partitions=2,
        blob_dir=tmp_path_factory.mktemp("blobs"),
        dicom_port=0,
        http_port=0,
        grpc_port=0,
        calling_ae_refresh_s=0.3,
        shutdown_grace_s=2,
        publish_timeout_s=10,
    )


@dataclass(frozen=True)
class RunningIngest:
    settings: IngestSettings
    endpoints: IngestEndpoints
    topics: Topics

    @property
    def stow_url(self) -> str:
        return f"http://{self.endpoints.http_host}:{self.endpoints.http_port}/dicomweb/studies"


@contextmanager
def running_ingest(settings: IngestSettings, start_timeout_s: float = 60.0) -> Iterator[RunningIngest]:
    """The whole service on a thread, as `imx serve ingest` runs it; stopped like SIGTERM would."""
    stop = threading.Event()
    ready: list[IngestEndpoints] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            serve(settings, stop, on_ready=ready.append)
        except BaseException as exc:  # surfaced to the test below
            failure.append(exc)

    thread = threading.Thread(target=run, name="ingest-under-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout_s
    while not ready:
        if failure:
            raise failure[0]
        if time.monotonic() > deadline:
            raise TimeoutError("ingest did not start")
        time.sleep(0.05)
    try:
        yield RunningIngest(settings, ready[0], Topics(settings.topic_prefix))
    finally:
        stop.set()
        thread.join(timeout=60)


def read_topic(bootstrap: str, topic: str) -> list:
    """Every record of `topic` up to its current end. Ingest publishes before it answers, so
    whatever a sender was told about is already there."""
    return read_to_end(bootstrap, topic)


def ingested_events(bootstrap: str, topics: Topics) -> list[events_pb2.InstanceIngested]:
    return [events_pb2.InstanceIngested.FromString(r.value) for r in read_topic(bootstrap, topics.ingested)]


def quarantined_events(bootstrap: str, topics: Topics) -> list[events_pb2.Quarantined]:
    return [events_pb2.Quarantined.FromString(r.value) for r in read_topic(bootstrap, topics.quarantine)]
