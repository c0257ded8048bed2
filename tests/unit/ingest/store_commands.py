"""A C-STORE-RQ command set as a sender puts it in a P-DATA primitive: one final command fragment."""

from __future__ import annotations

from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]


def store_command(data_set_type: int, context_id: int = 1) -> P_DATA:
    """A CT store of "1.2.3.4"; `data_set_type` 0x0101: no data set follows, anything else: one does."""
    request = C_STORE()
    request.MessageID = 7
    request.AffectedSOPClassUID = CTImageStorage
    request.AffectedSOPInstanceUID = "1.2.3.4"
    request.Priority = 2
    message = C_STORE_RQ()
    message.primitive_to_message(request)
    message.command_set.CommandDataSetType = data_set_type
    primitive = P_DATA()
    primitive.presentation_data_value_list.append(
        (context_id, b"\x03" + bytes(encode(message.command_set, True, True)))
    )
    return primitive
