"""A partner's receipt is the partner's words: one naming a "UID" of megabytes made every database write
of its batch fail (not an input error), and delivery and audit exited at each start. Such a receipt is
an input error now, dead-lettered, and audit's record of the dead letter keeps none of it."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from services.audit.records import build_record
from services.common.bus import dead_letter_for
from services.common.messages import IncomingMessage, PermanentError
from services.common.partner_receipts import MalformedReceipt, check_receipt
from services.common.topics import Topics
from services.delivery.handler import stored_receipt
from services.proto_gen.imx.v1 import events_pb2

TOPICS = Topics("t-")
NOW = datetime(2026, 2, 1, tzinfo=UTC)
HUGE = "1." * (5 * 1024 * 1024)


def _receipt(sop: str = "1.2.3.4", delivery_id: str = "d" * 32) -> events_pb2.DeliveryReceipt:
    return events_pb2.DeliveryReceipt(
        meta=events_pb2.EventMeta(event_id="e" * 32),
        delivery_id=delivery_id,
        instance=events_pb2.InstanceRef(study_instance_uid="1.2", series_instance_uid="1.2.3", sop_instance_uid=sop),
        status=events_pb2.STORE_STATUS_STORED,
        stored_at_ms=1,
    )


@pytest.mark.parametrize(
    "receipt",
    [_receipt(sop=HUGE + "1"), _receipt(sop="1.2.x"), _receipt(delivery_id="x" * 200), _receipt(delivery_id="d\n")],
)
def test_a_receipt_with_what_is_no_uid_or_id_is_an_input_error_everywhere(receipt: events_pb2.DeliveryReceipt) -> None:
    with pytest.raises(MalformedReceipt) as refused:
        check_receipt(receipt)
    assert len(str(refused.value)) < 100, "the field is named, never its value"
    with pytest.raises(PermanentError):
        stored_receipt(receipt, "lab")
    message = IncomingMessage(TOPICS.receipts("lab"), 0, 7, b"k", receipt.SerializeToString())
    with pytest.raises(PermanentError):
        build_record(message, TOPICS, NOW)
    dead = dead_letter_for(message, MalformedReceipt("bad"), TOPICS.dead_letter, "audit")
    letter = IncomingMessage(TOPICS.dead_letter, 0, 1, dead.key, dead.value, dict(dead.headers))
    record = build_record(letter, TOPICS, NOW)
    assert record["event_type"] == "dead_letter" and record["delivered_sop_uid"] is None


def test_a_receipt_as_a_gateway_writes_it_is_kept() -> None:
    assert check_receipt(_receipt()) is not None
    assert stored_receipt(_receipt(), "lab") is not None
