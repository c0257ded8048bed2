"""A small reference subscriber for partners (`imx partner-listen`): it reads the partner's topic and
writes each delivered instance to disk, showing how to subscribe with at-least-once semantics:
write the file atomically, then commit; a redelivered event finds its file already there."""

from __future__ import annotations

import os
import re
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from kafka import KafkaConsumer
from kafka.structs import OffsetAndMetadata, TopicPartition

from services.common.bus import MAX_MESSAGE_BYTES
from services.common.kafka_access import group_prefix
from services.common.topics import Topics
from services.proto_gen.imx.v1 import events_pb2

_SAFE_UID = re.compile(r"^[0-9.]{1,64}$")


@dataclass
class ListenResult:
    written: int = 0
    duplicates: int = 0


def path_for(out: Path, delivery: events_pb2.PartnerDelivery) -> Path:
    """<out>/<study uid>/<sop instance uid>.dcm; UIDs are checked so a hostile event cannot escape `out`."""
    study, sop = delivery.instance.study_instance_uid, delivery.instance.sop_instance_uid
    if not (_SAFE_UID.match(study) and _SAFE_UID.match(sop)):
        raise ValueError("delivery carries an invalid UID")
    return out / study / f"{sop}.dcm"


def write_delivery(out: Path, delivery: events_pb2.PartnerDelivery) -> bool:
    """True when written, False when the file was already there (a redelivery)."""
    target = path_for(out, delivery)
    if target.exists():
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
    with os.fdopen(fd, "wb") as handle:
        handle.write(delivery.dicom)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, target)
    return True


def listen(
    bootstrap: str,
    partner_id: str,
    out: Path,
    topics: Topics,
    idle_exit_s: float | None = None,
    on_item: Callable[[ListenResult], None] | None = None,
    max_items: int | None = None,
    client_config: Mapping[str, str] | None = None,
) -> ListenResult:
    """Consume until idle for `idle_exit_s` (None: forever) or `max_items` were seen. `client_config`
    signs in (kafka_access.sasl_client_config); the group id starts with the partner's group prefix."""
    consumer = KafkaConsumer(
        topics.partner(partner_id),
        bootstrap_servers=bootstrap,
        group_id=f"{group_prefix(partner_id)}listener",
        bootstrap_timeout_ms=10_000,  # a refused sign-in shows up as this timeout: say so soon
        **dict(client_config or {}),
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=MAX_MESSAGE_BYTES,
        fetch_max_bytes=4 * MAX_MESSAGE_BYTES,
    )
    result = ListenResult()
    last_activity = time.monotonic()
    try:
        while True:
            polled = consumer.poll(timeout_ms=500)
            offsets: dict[TopicPartition, OffsetAndMetadata] = {}
            for tp, records in polled.items():
                for record in records:
                    delivery = events_pb2.PartnerDelivery.FromString(record.value)
                    if write_delivery(out, delivery):
                        result.written += 1
                    else:
                        result.duplicates += 1
                    offsets[tp] = OffsetAndMetadata(record.offset + 1, "", -1)
                    if on_item:
                        on_item(result)
            if offsets:
                consumer.commit(offsets)
                last_activity = time.monotonic()
            if max_items is not None and result.written + result.duplicates >= max_items:
                return result
            if idle_exit_s is not None and time.monotonic() - last_activity > idle_exit_s:
                return result
    finally:
        consumer.close(autocommit=False)
