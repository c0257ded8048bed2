"""Delivery stage: an InstancePrepared in; the partner's PartnerDelivery and a DeliveryOutcome out."""

from __future__ import annotations

from collections.abc import Callable

from services.common.blob_store import BlobStore
from services.common.bus import MAX_MESSAGE_BYTES
from services.common.events import derived_meta, event_message, now_ms
from services.common.messages import IncomingMessage, OutgoingMessage
from services.common.topics import Topics
from services.proto_gen.imx.v1 import events_pb2

# Room for the event's other fields and headers inside one Kafka message.
INLINE_LIMIT = MAX_MESSAGE_BYTES - 64 * 1024



def _outcome(
    prepared: events_pb2.InstancePrepared, status: int, topic: str, detail: str, clock: Callable[[], int]
) -> events_pb2.DeliveryOutcome:
    return events_pb2.DeliveryOutcome(
        meta=derived_meta("outcome", prepared.meta, clock=clock),
        source_instance=prepared.source_instance,
        instance=prepared.instance,
        source_org=prepared.source_org,
        route_id=prepared.route_id,
        partner_id=prepared.partner_id,
        profile=prepared.profile,
        status=status,  # type: ignore[arg-type]
        topic=topic,
        detail=detail,
    )


def deliver_event(
    prepared: events_pb2.InstancePrepared,
    partner_known: bool,
    load_blob: Callable[[str], bytes],
    topics: Topics,
    clock: Callable[[], int] = now_ms,
) -> list[OutgoingMessage]:
    study = prepared.source_instance.study_instance_uid
    failure = ""
    if not partner_known:
        failure = "unknown-partner"
    elif prepared.blob.size > INLINE_LIMIT:
        failure = "exceeds-inline-limit"
    if failure:
        quarantined = events_pb2.Quarantined(
            meta=derived_meta("quarantine", prepared.meta, clock=clock),
            stage="delivery",
            reason=failure,
            detail=f"limit {INLINE_LIMIT} bytes" if failure == "exceeds-inline-limit" else "",
            source_org=prepared.source_org,
            instance=prepared.source_instance,
            blob=prepared.blob,
            partner_id=prepared.partner_id,
            route_id=prepared.route_id,
        )
        outcome = _outcome(prepared, events_pb2.DELIVERY_STATUS_FAILED, "", failure, clock)
        return [
            event_message(topics.quarantine, quarantined, study),
            event_message(topics.outcomes, outcome, study),
        ]
    partner_topic = topics.partner(prepared.partner_id)
    delivery = events_pb2.PartnerDelivery(
        meta=derived_meta("delivery", prepared.meta, clock=clock),
        instance=prepared.instance,
        blob=prepared.blob,
        partner_id=prepared.partner_id,
        deidentified=prepared.deidentified,
        profile=prepared.profile,
        dicom=load_blob(prepared.blob.sha256),
    )
    outcome = _outcome(prepared, events_pb2.DELIVERY_STATUS_DELIVERED, partner_topic, "", clock)
    # Keyed by the delivered study UID: the partner never sees the original when it was remapped.
    return [
        event_message(partner_topic, delivery, prepared.instance.study_instance_uid),
        event_message(topics.outcomes, outcome, study),
    ]


def build_delivery_handler(
    partner_known: Callable[[str], bool],
    store: BlobStore,
    topics: Topics,
    ensure_partner_topic: Callable[[str], None],
) -> Callable[[IncomingMessage], list[OutgoingMessage]]:
    def handle(message: IncomingMessage) -> list[OutgoingMessage]:
        prepared = events_pb2.InstancePrepared.FromString(message.value)
        known = partner_known(prepared.partner_id)
        if known:
            ensure_partner_topic(prepared.partner_id)
        return deliver_event(prepared, known, store.get, topics)

    return handle
