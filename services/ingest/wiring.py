"""Builds ingest's collaborators from settings; used by the service and by `imx send` alike."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from pymongo.database import Database

from services.common.blob_store import LocalBlobStore
from services.common.bus import BusProducer
from services.common.dicom.header import InputLimits
from services.common.mongo import connect
from services.common.service_access import ensure_pipeline_topics, kafka_client_config
from services.common.stats import StageStats
from services.common.stores.organisations import OrganisationStore
from services.common.topics import Topics
from services.ingest.acceptance import Acceptance
from services.ingest.errors import IngestUnavailable
from services.ingest.file_receipts import FileReceiptStore, receipts_folder
from services.ingest.settings import IngestSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IngestResources:
    topics: Topics
    organisations: OrganisationStore
    acceptance: Acceptance
    db: Database  # where control tokens and change records are (services/common/control_auth.py)


class StoppedBeforeStart(Exception):
    """Asked to stop while waiting for the broker: nothing was opened, so there is nothing to finish."""


@contextmanager
def open_ingest(
    settings: IngestSettings, stats: StageStats | None = None, stop: threading.Event | None = None
) -> Iterator[IngestResources]:
    """Topics ensured (waiting for a broker that is not up yet, until `stop`), MongoDB and Kafka clients
    open for the duration of the block. `StoppedBeforeStart` when `stop` ended that wait."""
    topics = Topics(settings.topic_prefix)
    kafka = kafka_client_config(settings)
    ensure_pipeline_topics(settings, topics, stop, kafka)
    if stop is not None and stop.is_set():
        raise StoppedBeforeStart
    client, db = connect(settings)
    try:
        producer = BusProducer(settings.kafka_bootstrap, client_id="imx-ingest", client_config=kafka)
        try:
            acceptance = Acceptance(
                blobs=LocalBlobStore(settings.blob_dir),
                receipts=FileReceiptStore(receipts_folder(settings.blob_dir)),
                bus=producer,
                topics=topics,
                max_instance_bytes=settings.max_instance_bytes,
                publish_timeout_s=settings.publish_timeout_s,
                stats=stats,
                limits=input_limits(settings),
                commit_gather_s=settings.commit_gather_s,
            )
            try:
                yield IngestResources(topics, OrganisationStore(db), acceptance, db)
            finally:
                _write_waiting_marks(acceptance)
        finally:
            producer.close()
    finally:
        client.close()


def _write_waiting_marks(acceptance: Acceptance) -> None:
    """The last group's "published" marks wait for a next group; at the end there is none. Not written
    (the blob volume failing), a resend of those instances is published once more, under the same id."""
    try:
        acceptance.commits.flush()
    except IngestUnavailable as exc:
        log.warning("published marks not written at shutdown", extra={"error": str(exc)})


def input_limits(settings: IngestSettings) -> InputLimits:
    """The work any one input may cause, from the settings (header.InputLimits)."""
    return InputLimits(
        settings.max_inflated_bytes,
        settings.max_sequence_depth,
        settings.max_spilled_inflations,
        settings.max_header_elements,
    )
