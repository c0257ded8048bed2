"""A C-STORE request whose data set never comes is answered after `wait_s`
(services/ingest/missing_data_sets.py), however the watch's checks fall against ingest's receive starting
the request's file (services/ingest/dimse_receive.py)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom.pdu_primitives import P_DATA

from services.ingest import dimse_receive
from services.ingest.missing_data_sets import MissingDataSets
from tests.unit.fake_config_store import Clock
from tests.unit.ingest.scp_servers import receive_to_files_for_this_test
from tests.unit.ingest.store_commands import store_command

WAIT_S = 2.0


def _association() -> Any:
    sent: list[tuple[Any, int]] = []
    return SimpleNamespace(
        dimse=SimpleNamespace(message=None, send_msg=lambda msg, cx: sent.append((msg, cx)), sent=sent),
        requestor=SimpleNamespace(ae_title="SENDER"),
        _accepted_cx={1: SimpleNamespace(transfer_syntax=[ExplicitVRLittleEndian])},
    )


@pytest.mark.parametrize("first_check", ["before the file", "with the file, before its meta", "after its meta"])
def test_a_request_without_data_is_answered_whenever_the_watch_first_saw_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, first_check: str
) -> None:
    receive_to_files_for_this_test(tmp_path, monkeypatch)
    assoc, clock, answered = _association(), Clock(), []

    def answer(_assoc: Any, part10: bytes) -> Dataset:
        answered.append(part10)
        status = Dataset()
        status.Status = 0xC000
        return status

    watch = MissingDataSets(lambda: [assoc], answer, WAIT_S, clock)
    start_file = dimse_receive._start_file

    def start_file_seen_by_the_watch(msg: Any, context_id: int, association: Any) -> None:
        # The watch runs on its own thread: here it looks at the moment named by `first_check`.
        if first_check == "before the file":
            watch.check()
        start_file(msg, context_id, association)
        if first_check == "after its meta":
            watch.check()

    monkeypatch.setattr(dimse_receive, "_start_file", start_file_seen_by_the_watch)
    if first_check == "with the file, before its meta":
        monkeypatch.setattr(dimse_receive.dimse_encoding, "file_meta_bytes", _checked_first(watch))

    message = assoc.dimse.message = dimse_receive.new_message()
    assert not message.decode_msg(store_command(0x0001), assoc)  # a data set is to follow
    clock.now += 1
    watch.check()
    assert not assoc.dimse.sent, "answered before it had waited"
    clock.now += WAIT_S
    watch.check()

    assert [msg.Status for msg, _cx in assoc.dimse.sent] == [0xC000]
    assert answered and answered[0][128:132] == b"DICM"  # the file meta, and no data set
    assert assoc.dimse.message is None  # the association is ready for its next request


def _checked_first(watch: MissingDataSets) -> Any:
    file_meta_bytes = dimse_receive.dimse_encoding.file_meta_bytes

    def checked(fields: Any) -> bytes:
        watch.check()
        return file_meta_bytes(fields)

    return checked


def test_a_request_whose_data_is_arriving_is_left_to_the_network_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    receive_to_files_for_this_test(tmp_path, monkeypatch)
    assoc, clock = _association(), Clock()
    watch = MissingDataSets(lambda: [assoc], lambda *_: Dataset(), WAIT_S, clock)
    message = assoc.dimse.message = dimse_receive.new_message()
    assert not message.decode_msg(store_command(0x0001), assoc)
    watch.check()
    fragment = P_DATA()
    fragment.presentation_data_value_list.append((1, b"\x00" + b"\x08\x00\x16\x00" * 2048))  # not the last
    assert not message.decode_msg(fragment, assoc)
    clock.now += 1
    watch.check()
    clock.now += 10 * WAIT_S
    watch.check()
    assert not assoc.dimse.sent


def test_a_first_pdu_still_arriving_on_a_slow_link_is_data_arriving(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing of a PDU is written to the file before all of it has arrived: on a link under ~4 Mbit/s a
    1 MiB PDU takes over 2 s, and the store was answered as empty (C000) while its data came in."""
    receive_to_files_for_this_test(tmp_path, monkeypatch)
    assoc, clock = _association(), Clock()
    assoc.imx_pdu_reader = SimpleNamespace(received=0)
    watch = MissingDataSets(lambda: [assoc], lambda *_: Dataset(), WAIT_S, clock)
    message = assoc.dimse.message = dimse_receive.new_message()
    assert not message.decode_msg(store_command(0x0001), assoc)
    watch.check()
    clock.now += 1
    assoc.imx_pdu_reader.received += 64 * 1024  # the data set's first PDU, a piece of it so far
    watch.check()
    clock.now += 10 * WAIT_S
    watch.check()
    assert not assoc.dimse.sent


def test_the_reader_counts_a_pdu_body_as_it_arrives() -> None:
    import socket

    ours, theirs = socket.socketpair()
    reader = dimse_receive.PduReader(SimpleNamespace(), max_data_pdu=1 << 20)
    theirs.sendall(b"\0" * 100_006)  # a body and the next PDU's header
    body, ahead = dimse_receive._read_into(ours, 100_000, reader._count)
    theirs.close()
    ours.close()
    assert (len(body), len(ahead)) == (100_000, 6) and reader.received == 100_006
