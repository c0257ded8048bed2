"""Delivery stage: an InstancePrepared in; a reference on the partner's feed and a DeliveryOutcome out.

The feed carries what the partner needs to decide and fetch (UIDs, SOP Class, transfer syntax, size,
SHA-256, route, priority, profile and version, and the WADO-RS URL), never the object: any size can
be delivered and the broker moves no pixel data. What each partner was sent is recorded (in
`flush()`, which the bus runs before it publishes the batch) so every reference on a feed resolves
when the partner fetches it.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from services.common.events import derived_meta, event_message, now_ms
from services.common.lanes import lane_for
from services.common.messages import IncomingMessage, OutgoingMessage
from services.common.partner_receipts import SUPERSEDED, check_receipt
from services.common.quarantine_events import UNKNOWN_PARTNER, quarantined
from services.common.topics import Topics
from services.delivery.delivered import DeliveredInstance, StoredReceipt
from services.delivery.retrieval_refs import QUERY_PARAM, RetrievalRefs, SignedObject
from services.proto_gen.imx.v1 import events_pb2


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


def delivery_pattern(topics: Topics) -> str:
    """The stage's subscription: prepared instances (every lane) and every partner's receipts."""
    prepared = "|".join(re.escape(topic) for topic in topics.prepared_lanes)
    return "^(?:" + prepared + "|" + topics.receipts_pattern[1:-1] + ")$"


def retrieval_url(base: str, instance: events_pb2.InstanceRef, ref: str = "") -> str:
    """WADO-RS URL of one instance (PS3.18 10.4.1.1.3) under the partners' DICOMweb base; with `ref`, a
    signed retrieval reference (services/delivery/retrieval_refs.py) as its query."""
    url = (
        f"{base}/studies/{instance.study_instance_uid}/series/{instance.series_instance_uid}"
        f"/instances/{instance.sop_instance_uid}"
    )
    return f"{url}?{QUERY_PARAM}={ref}" if ref else url


def signed_ref(refs: RetrievalRefs | None, prepared: events_pb2.InstancePrepared) -> str:
    """The token that lets the partner's fetch of this delivery skip the delivered index ("" unsigned)."""
    if refs is None:
        return ""
    i = prepared.instance
    signed = SignedObject(prepared.blob.sha256, prepared.blob.size, i.transfer_syntax_uid)
    return refs.token(prepared.partner_id, i.study_instance_uid, i.series_instance_uid, i.sop_instance_uid, signed)


def delivered_instance(
    delivery: events_pb2.PartnerDelivery, prepared: events_pb2.InstancePrepared
) -> DeliveredInstance:
    """What the retrieval API needs to know of one delivery, and what an outcome about it later (expired
    unread: retention_watch) needs of the instance as received: its UIDs when de-identification changed
    them, and the sending organisation, so that outcome lands in the study's trail and the sender's figures."""
    source = prepared.source_instance
    return DeliveredInstance(
        partner_id=delivery.partner_id,
        study_uid=delivery.instance.study_instance_uid,
        series_uid=delivery.instance.series_instance_uid,
        sop_uid=delivery.instance.sop_instance_uid,
        sop_class_uid=delivery.instance.sop_class_uid,
        transfer_syntax_uid=delivery.instance.transfer_syntax_uid,
        modality=delivery.instance.modality,
        sha256=delivery.blob.sha256,
        size=delivery.blob.size,
        delivery_id=delivery.meta.event_id,
        # The source's hash and UIDs, kept only where they differ from what was delivered (a de-identified copy).
        source_sha256=_if_changed(prepared.source_blob.sha256, delivery.blob.sha256),
        source_study_uid=_if_changed(source.study_instance_uid, delivery.instance.study_instance_uid),
        source_sop_uid=_if_changed(source.sop_instance_uid, delivery.instance.sop_instance_uid),
        source_org=prepared.source_org,
        route_id=delivery.route_id,
        priority=int(delivery.priority),
        delivered_at_ms=delivery.meta.occurred_at_ms,
        ingested_at_ms=delivery.meta.ingested_at_ms,
    )


def _if_changed(source: str, delivered: str) -> str:
    return source if source != delivered else ""


def deliver_event(
    prepared: events_pb2.InstancePrepared,
    partner_known: bool,
    topics: Topics,
    dicomweb_base: str,
    clock: Callable[[], int] = now_ms,
    refs: RetrievalRefs | None = None,
) -> tuple[list[OutgoingMessage], events_pb2.PartnerDelivery | None]:
    """The messages to publish, and the delivery to record (None when nothing is delivered)."""
    study = prepared.source_instance.study_instance_uid
    if not partner_known:
        event = quarantined("delivery", UNKNOWN_PARTNER, "", prepared, clock)
        outcome = _outcome(prepared, events_pb2.DELIVERY_STATUS_FAILED, "", UNKNOWN_PARTNER, clock)
        return [
            event_message(topics.quarantine, event, study),
            event_message(topics.outcomes, outcome, study),
        ], None
    partner_topic = topics.lane(topics.partner(prepared.partner_id), lane_for(prepared.priority))
    delivery = events_pb2.PartnerDelivery(
        meta=derived_meta("delivery", prepared.meta, clock=clock),
        instance=prepared.instance,
        blob=prepared.blob,
        partner_id=prepared.partner_id,
        deidentified=prepared.deidentified,
        profile=prepared.profile,
        profile_version=prepared.profile_version,
        route_id=prepared.route_id,
        priority=prepared.priority,
        retrieval_url=retrieval_url(dicomweb_base, prepared.instance, signed_ref(refs, prepared)),
    )
    outcome = _outcome(prepared, events_pb2.DELIVERY_STATUS_DELIVERED, partner_topic, "", clock)
    # Keyed by the delivered study UID: the partner never sees the original when it was remapped.
    return [
        event_message(partner_topic, delivery, prepared.instance.study_instance_uid),
        event_message(topics.outcomes, outcome, study),
    ], delivery


_RECEIPT_STATUS = {
    events_pb2.STORE_STATUS_STORED: "stored",
    events_pb2.STORE_STATUS_DEAD_LETTERED: "dead_lettered",
}


def stored_receipt(receipt: events_pb2.DeliveryReceipt, partner_id: str) -> StoredReceipt | None:
    """What a gateway's receipt changes in the delivery record (None: nothing, e.g. a retry notice).
    The partner is the owner of the receipts topic, never what the payload says."""
    status = _RECEIPT_STATUS.get(receipt.status)
    if status is None or not receipt.instance.sop_instance_uid or receipt.detail == SUPERSEDED:
        # Superseded: the gateway did not store that delivery (it holds a newer send of the instance).
        return None
    check_receipt(receipt)
    return StoredReceipt(
        partner_id=partner_id,
        study_uid=receipt.instance.study_instance_uid,
        series_uid=receipt.instance.series_instance_uid,
        sop_uid=receipt.instance.sop_instance_uid,
        status=status,
        at_ms=receipt.stored_at_ms or receipt.meta.occurred_at_ms,
        delivery_id=receipt.delivery_id,
        ingested_at_ms=receipt.meta.ingested_at_ms,
    )


class DeliveryHandler:
    """A bus handler with the bus's `flush()` batch hook: the batch's deliveries are recorded in one
    write before the bus publishes the batch's messages (and only then commits).

    It reads two kinds of input: prepared instances, and the partners' receipts (what each gateway
    stored), which mark a delivery as no longer owed so its objects may eventually be deleted."""

    def __init__(
        self,
        partner_known: Callable[[str], bool],
        topics: Topics,
        ensure_partner_topic: Callable[[str], None],
        record: Callable[[list[DeliveredInstance]], None],
        dicomweb_base: str,
        mark: Callable[[list[StoredReceipt]], None] = lambda receipts: None,
        clock: Callable[[], int] = now_ms,
        refs: RetrievalRefs | None = None,
    ) -> None:
        self._partner_known = partner_known
        self._topics = topics
        self._ensure_partner_topic = ensure_partner_topic
        self._record = record
        self._base = dicomweb_base
        self._clock = clock
        self._mark = mark
        self._refs = refs
        self._pending: list[DeliveredInstance] = []
        self._receipts: list[StoredReceipt] = []

    def __call__(self, message: IncomingMessage) -> list[OutgoingMessage]:
        receipts_of = self._topics.receipts_partner(message.topic)
        if receipts_of is not None:
            receipt = stored_receipt(events_pb2.DeliveryReceipt.FromString(message.value), receipts_of)
            if receipt is not None:
                self._receipts.append(receipt)
            return []
        prepared = events_pb2.InstancePrepared.FromString(message.value)
        known = self._partner_known(prepared.partner_id)
        if known:
            self._ensure_partner_topic(prepared.partner_id)
        outputs, delivery = deliver_event(prepared, known, self._topics, self._base, self._clock, self._refs)
        if delivery is not None:
            self._pending.append(delivered_instance(delivery, prepared))
        return outputs

    def flush(self) -> None:
        pending, self._pending = self._pending, []
        receipts, self._receipts = self._receipts, []
        # Cleared first: if a write fails the bus reads the whole batch again and rebuilds both.
        if pending:
            self._record(pending)
        if receipts:
            self._mark(receipts)
