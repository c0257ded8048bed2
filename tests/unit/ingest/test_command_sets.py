"""C-STORE-RQ command sets read with struct (services/ingest/command_sets.py) give the primitive
pynetdicom's `message_to_primitive` gives, and anything unusual is left to pydicom."""

from __future__ import annotations

from io import BytesIO
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pynetdicom.dimse_messages import C_ECHO_RQ, C_STORE_RQ
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.dsutils import decode, encode
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from services.ingest import command_sets

_FIELDS = (
    "AffectedSOPClassUID",
    "AffectedSOPInstanceUID",
    "MessageID",
    "Priority",
    "MoveOriginatorApplicationEntityTitle",
    "MoveOriginatorMessageID",
    "DataSet",
    "_context_id",
    "_dataset_path",
    "_dataset_file",
)


def _command_set(message_id: int = 7, priority: int = 2, instance: str = "1.2.3.4", **more: Any) -> bytes:
    primitive = C_STORE()
    primitive.MessageID = message_id
    primitive.AffectedSOPClassUID = CTImageStorage
    primitive.AffectedSOPInstanceUID = instance
    primitive.Priority = priority
    for name, value in more.items():
        setattr(primitive, name, value)
    primitive.DataSet = BytesIO(b"\x00")
    message = C_STORE_RQ()
    message.primitive_to_message(primitive)
    return bytes(encode(message.command_set, True, True))


def _received(encoded: bytes, store: command_sets.StoreCommand | None) -> Any:
    """A C-STORE-RQ message as ingest's decode_msg leaves it."""
    message: Any = C_STORE_RQ()
    message.command_set = decode(BytesIO(encoded), True, True)
    message.context_id = 3
    message._data_set_path = "/tmp/x.dcm"
    message._data_set_file = object()
    message.imx_store_command = store
    return message


@pytest.mark.parametrize(
    "encoded",
    [
        _command_set(),
        _command_set(message_id=65535, priority=0, instance="1.2.840.10008.99.123456789012345678901234567890"),
        _command_set(message_id=0, priority=1, instance="1.23"),  # odd length: padded with a NUL
    ],
)
def test_the_primitive_is_pynetdicoms(encoded: bytes) -> None:
    store = command_sets.read_store_command(encoded)
    assert store is not None
    message = _received(encoded, store)
    ours = command_sets.to_primitive(message)
    theirs = message.message_to_primitive()
    assert type(ours) is type(theirs) is C_STORE
    for field in _FIELDS:
        assert getattr(ours, field) == getattr(theirs, field), field
        assert type(getattr(ours, field)) is type(getattr(theirs, field)), field


def _echo() -> bytes:
    primitive = C_ECHO()
    primitive.MessageID = 1
    primitive.AffectedSOPClassUID = "1.2.840.10008.1.1"
    message = C_ECHO_RQ()
    message.primitive_to_message(primitive)
    return bytes(encode(message.command_set, True, True))


def _with(element: int, vr: str, value: Any) -> bytes:
    ds = decode(BytesIO(_command_set()), True, True)
    ds.add_new(element, vr, value)
    return bytes(encode(ds, True, True))


@pytest.mark.parametrize(
    "encoded",
    [
        _echo(),  # another command
        _command_set(MoveOriginatorApplicationEntityTitle="MOVER", MoveOriginatorMessageID=3),
        _command_set(instance="1.02.3"),  # pydicom warns about it: pydicom reads it
        _with(0x00000902, "LO", "a comment"),  # an element a C-STORE-RQ does not have
        _command_set()[:-3],  # cut short
        _command_set() + b"\x00\x00",
    ],
)
def test_anything_unusual_is_left_to_pydicom(encoded: bytes) -> None:
    assert command_sets.read_store_command(encoded) is None


def test_a_message_not_read_here_goes_through_pynetdicom() -> None:
    encoded = _command_set()
    message = _received(encoded, None)
    assert command_sets.to_primitive(message).AffectedSOPInstanceUID == "1.2.3.4"
    del message.imx_store_command
    assert isinstance(command_sets.to_primitive(message), C_STORE)


def test_an_invalid_priority_raises_as_pynetdicom_does() -> None:
    encoded = bytearray(_command_set())
    ds: Dataset = decode(BytesIO(bytes(encoded)), True, True)
    ds.Priority = 7
    encoded = bytearray(encode(ds, True, True))
    store = command_sets.read_store_command(bytes(encoded))
    assert store is not None
    with pytest.raises(ValueError):
        _received(bytes(encoded), None).message_to_primitive()
    with pytest.raises(ValueError):
        command_sets.to_primitive(_received(bytes(encoded), store))
