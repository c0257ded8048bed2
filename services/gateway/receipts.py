"""DeliveryReceipt events the gateway reports on the partner's receipts topic (pure functions).

Ids are deterministic (`event_id("receipt", <event id>, <status>)`), so a receipt published again
after a crash is the same receipt and audit keeps one. A delivery the gateway stored before and sent
again with a later ingest time is stored again (records.py `send_action`): that store's receipts name
the send's ingest time too (`receipt_event_id`). `ingested_at_ms` is carried from the
delivery, so audit can compute the turnaround from the sender's C-STORE to the partner's PACS and
delivery can tell which send of a delivery a receipt reports on.
"""

from __future__ import annotations

from typing import Any

from services.common.events import EVENT_TYPE_HEADER, event_id
from services.common.partner_receipts import SUPERSEDED
from services.gateway.records import Judged, SendAction
from services.proto_gen.imx.v1 import events_pb2

STORED = events_pb2.STORE_STATUS_STORED
DEAD_LETTERED = events_pb2.STORE_STATUS_DEAD_LETTERED
STUDY_COMPLETE = events_pb2.STORE_STATUS_STUDY_COMPLETE
STUDY_INCOMPLETE = events_pb2.STORE_STATUS_STUDY_INCOMPLETE
_STATUS_WORD: dict[events_pb2.StoreStatus, str] = {
    STORED: "stored",
    DEAD_LETTERED: "dead-lettered",
    STUDY_COMPLETE: "complete",
    STUDY_INCOMPLETE: "incomplete",
}


def receipt_event_id(delivery: events_pb2.PartnerDelivery, status: events_pb2.StoreStatus, again: bool) -> str:
    """A receipt's id; `again`: the delivery was stored here before, so this send's receipt is its own."""
    parts = ["receipt", delivery.meta.event_id, _STATUS_WORD[status]]
    if again:
        parts.append(str(delivery.meta.ingested_at_ms))
    return event_id(*parts)


def _meta(parent: events_pb2.EventMeta, receipt_id: str, now_ms: int) -> events_pb2.EventMeta:
    return events_pb2.EventMeta(
        event_id=receipt_id,
        causation_id=parent.event_id,
        occurred_at_ms=now_ms,
        ingested_at_ms=parent.ingested_at_ms,
    )


def instance_receipt(
    delivery: events_pb2.PartnerDelivery,
    status: events_pb2.StoreStatus,
    target_kind: str,
    attempts: int,
    now_ms: int,
    detail: str = "",
    stored_at_ms: int = 0,
    receipt_id: str = "",
) -> events_pb2.DeliveryReceipt:
    """STORED or DEAD_LETTERED for one delivery; `receipt_id` when not the first store's
    (`receipt_event_id`)."""
    return events_pb2.DeliveryReceipt(
        meta=_meta(delivery.meta, receipt_id or receipt_event_id(delivery, status, again=False), now_ms),
        delivery_id=delivery.meta.event_id,
        instance=delivery.instance,
        status=status,
        target_kind=target_kind,
        detail=detail,
        attempts=attempts,
        stored_at_ms=stored_at_ms,
    )


def stored_receipt_id(delivery: events_pb2.PartnerDelivery, judged: Judged) -> str:
    """The id of the STORED receipt for a delivery as the local record judged it: a repeat reports the
    store it repeats (under the id recorded with it; the first store's when an earlier release stored
    it), a store of a delivery stored here before (stored over since) under an id of its own."""
    if judged.action is SendAction.DUPLICATE:
        return judged.recorded_receipt_id or receipt_event_id(delivery, STORED, again=False)
    return receipt_event_id(delivery, STORED, judged.again)


def store_receipt(
    delivery: events_pb2.PartnerDelivery,
    target_kind: str,
    judged: Judged,
    attempts: int,
    stored_at_ms: int,
    detail: str,
) -> events_pb2.DeliveryReceipt:
    """STORED: the target took the delivery's object (the target's status as `detail`)."""
    receipt_id = stored_receipt_id(delivery, judged)
    return instance_receipt(delivery, STORED, target_kind, attempts, stored_at_ms, detail, stored_at_ms, receipt_id)


def duplicate_receipt(
    delivery: events_pb2.PartnerDelivery, target_kind: str, judged: Judged
) -> events_pb2.DeliveryReceipt:
    """STORED "duplicate": the target holds the delivery's object already, stored when the record says;
    the same receipt as that store's when its send is the same."""
    return store_receipt(delivery, target_kind, judged, 1, judged.stored_at_ms, "duplicate")


def dead_letter_receipt(
    delivery: events_pb2.PartnerDelivery, target_kind: str, judged: Judged, attempts: int, at_ms: int, status: str
) -> events_pb2.DeliveryReceipt:
    receipt_id = receipt_event_id(delivery, DEAD_LETTERED, judged.again)
    return instance_receipt(delivery, DEAD_LETTERED, target_kind, attempts, at_ms, status, receipt_id=receipt_id)


def superseded_receipt(
    delivery: events_pb2.PartnerDelivery, target_kind: str, now_ms: int
) -> events_pb2.DeliveryReceipt:
    """STORED with detail SUPERSEDED: the gateway settled the delivery without storing it, the target
    holding a newer send of the instance. Its id is its own, so a later real store of the same delivery
    (sent again newer still) is not taken for its replay; delivery marks nothing by it."""
    own_id = event_id("receipt", delivery.meta.event_id, _STATUS_WORD[STORED], SUPERSEDED)
    return instance_receipt(delivery, STORED, target_kind, 0, now_ms, detail=SUPERSEDED, receipt_id=own_id)


def study_receipt(
    study: events_pb2.StudyComplete, missing: int, target_kind: str, now_ms: int
) -> events_pb2.DeliveryReceipt:
    """STUDY_COMPLETE when every instance of the manifest is stored, else STUDY_INCOMPLETE(missing)."""
    status = STUDY_COMPLETE if missing == 0 else STUDY_INCOMPLETE
    return events_pb2.DeliveryReceipt(
        meta=_meta(study.meta, event_id("receipt", study.meta.event_id, _STATUS_WORD[status]), now_ms),
        instance=events_pb2.InstanceRef(study_instance_uid=study.study_instance_uid),
        status=status,
        target_kind=target_kind,
        detail=f"{missing} of {max(study.count, len(study.instances))} missing" if missing else "",
        missing=missing,
    )


def receipt_record(receipt: events_pb2.DeliveryReceipt) -> dict[str, Any]:
    """The producer's `send` arguments for a receipt but its topic: keyed by study, so a study's
    receipts stay in order on one partition."""
    return {
        "value": receipt.SerializeToString(deterministic=True),
        "key": receipt.instance.study_instance_uid.encode() or None,
        "headers": [(EVENT_TYPE_HEADER, b"DeliveryReceipt")],
    }
