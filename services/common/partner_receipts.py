"""What a partner's receipt must look like before a stage keeps anything from it.

A partner's gateway writes its receipts topic, so a receipt's fields are the partner's words. Its UIDs
and ids become database keys and documents (delivery's delivered-instance pages, audit's records): a
receipt naming a 50 MiB "UID" made every write of its batch fail (DocumentTooLarge, not an input error),
and delivery and audit exited at each start. Checked here, such a receipt is an input error: dead-lettered.
"""

from __future__ import annotations

from services.common.dicom.uids import is_uid_as_received
from services.common.messages import PermanentError
from services.proto_gen.imx.v1 import events_pb2

MAX_ID_CHARS = 128  # imx's event ids are 32 hex characters

# The detail of a gateway's STORED receipt for a delivery it settled without storing: the partner's
# target holds a newer send of the instance (services/gateway/records.py `send_action`). Delivery marks
# nothing by it.
SUPERSEDED = "superseded"


class MalformedReceipt(PermanentError):
    """A receipt whose UIDs or ids are not what a gateway writes (names the field, never its value)."""


def check_receipt(receipt: events_pb2.DeliveryReceipt) -> events_pb2.DeliveryReceipt:
    """`receipt`, or MalformedReceipt: every UID it names is one (digits and dots, at most 64), every id
    printable ASCII of at most MAX_ID_CHARS."""
    instance = receipt.instance
    for name in ("study_instance_uid", "series_instance_uid", "sop_instance_uid"):
        value = getattr(instance, name)
        if value and not is_uid_as_received(value):
            raise MalformedReceipt(f"receipt's {name} is not a UID")
    for name, value in (("meta.event_id", receipt.meta.event_id), ("delivery_id", receipt.delivery_id)):
        if len(value) > MAX_ID_CHARS or not value.isascii() or not value.isprintable():
            raise MalformedReceipt(f"receipt's {name} is not an id")
    return receipt
