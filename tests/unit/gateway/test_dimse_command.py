"""The C-STORE-RQ the gateway encodes itself is byte for byte what pynetdicom would send."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import pytest
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE

from services.gateway.dimse_exchange import message_pdus
from services.gateway.dimse_store import c_store_command

CT = "1.2.840.10008.5.1.4.1.1.2"


def pynetdicom_pdvs(request: C_STORE, pdu_size: int) -> list[bytes]:
    message = C_STORE_RQ()
    message.primitive_to_message(request)
    return [pdata.presentation_data_value_list[0][1] for pdata in message.encode_msg(1, pdu_size)]


def request_for(message_id: int, sop_instance: str) -> C_STORE:
    request = C_STORE()
    request.MessageID = message_id
    request.AffectedSOPClassUID = CT
    request.AffectedSOPInstanceUID = sop_instance
    request.Priority = 2
    return request


@pytest.mark.parametrize("sop_instance", ["1.2.3.4", "1.2.3.45", "2.25." + "9" * 58])
@pytest.mark.parametrize("message_id", [1, 2, 0xFFFF])
def test_command_set_is_pynetdicoms(message_id: int, sop_instance: str) -> None:
    request = request_for(message_id, sop_instance)
    request.DataSet = BytesIO(b"\x08\x00\x16\x00" + b"x" * 20)
    first = pynetdicom_pdvs(request, 16384)[0]
    assert first == b"\x03" + c_store_command(message_id, CT, sop_instance)


@pytest.mark.parametrize("size", [0, 1, 100, 16378, 16379, 40_000])
@pytest.mark.parametrize("pdu_size", [16, 16384])
def test_fragments_are_pynetdicoms(tmp_path: Path, size: int, pdu_size: int) -> None:
    """Same PDVs as a (path, offset) data set sent by pynetdicom: command, then the file from its offset."""
    path = tmp_path / "instance.dcm"
    header = b"P" * 132
    path.write_bytes(header + bytes(range(256)) * (size // 256) + b"z" * (size % 256))
    request = request_for(7, "1.2.3")
    request._dataset_path = (path, len(header))
    with path.open("rb") as handle:
        handle.seek(len(header))
        ours = [
            p.presentation_data_value_list[0]
            for p in message_pdus(c_store_command(7, CT, "1.2.3"), handle, 1, pdu_size)
        ]
    assert [pdv for _, pdv in ours] == pynetdicom_pdvs(request, pdu_size)
    assert {context for context, _ in ours} == {1}
