"""The DICOM store against a PACS that answers warnings, takes many SOP classes, or cannot be found.

Before: any warning but three was dead-lettered (the partner told DEAD_LETTERED about an instance its
PACS held, a replay storing it twice); the SOP class needed first fell out of the proposed contexts
after ~64 others and was dead-lettered "not accepted" until the gateway restarted; and a PACS host name
that did not resolve ended `imx gateway run` with a traceback."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from io import BytesIO
from typing import Any

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE, StoragePresentationContexts, evt
from pynetdicom.service_class import StorageServiceClass
from pynetdicom.sop_class import uid_to_service_class

from services.gateway.dimse_store import DimseStore
from services.gateway.fetched import Fetched
from services.gateway.targets import DicomTarget, StoreResult
from services.proto_gen.imx.v1 import events_pb2
from tools.devstack import free_port

pytestmark = pytest.mark.integration


def part10(sop_class: str) -> bytes:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    uid = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = sop_class, uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID, ds.PatientID = sop_class, uid, "PEERS"
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


@contextmanager
def pacs(status: int = 0x0000, syntax: str = ExplicitVRLittleEndian) -> Iterator[tuple[int, list[str]]]:
    """A PACS taking every storage SOP class in `syntax`, answering `status`."""
    received: list[str] = []

    def on_store(event: Any) -> int:
        received.append(str(event.request.AffectedSOPClassUID))
        return status

    ae = AE(ae_title="PEERS")
    for context in StoragePresentationContexts:
        ae.add_supported_context(context.abstract_syntax, syntax)
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        yield port, received
    finally:
        server.shutdown()


def store(target: DimseStore, sop_class: str) -> StoreResult:
    return target.store(Fetched(data=part10(sop_class)), events_pb2.PartnerDelivery())


@pytest.mark.parametrize("status", [0x0001, 0x0107, 0x0116, 0xB000, 0xB123])
def test_a_warning_is_stored_with_its_code(status: int) -> None:
    with pacs(status) as (port, received):
        target = DimseStore(DicomTarget("PEERS", "127.0.0.1", port), dimse_timeout_s=10)
        try:
            result = store(target, CTImageStorage)
        finally:
            target.close()
    assert result.ok and result.status_detail == f"0x{status:04X}" and received == [CTImageStorage]


def test_the_class_in_hand_is_always_proposed_however_many_came_before() -> None:
    others = [
        c.abstract_syntax
        for c in StoragePresentationContexts
        if c.abstract_syntax != CTImageStorage and uid_to_service_class(c.abstract_syntax) is StorageServiceClass
    ][:66]
    with pacs() as (port, received):
        target = DimseStore(DicomTarget("PEERS", "127.0.0.1", port), dimse_timeout_s=10)
        try:
            results = []
            for other in others:  # a CT between every other class: CT was needed first of all
                results += [store(target, CTImageStorage), store(target, other)]
        finally:
            target.close()
    failed = [
        (r.status_detail, cls)
        for r, cls in zip(results, [c for o in others for c in (CTImageStorage, o)], strict=True)
        if not r.ok
    ]
    assert failed == [] and received.count(CTImageStorage) == len(others)


def test_a_pacs_name_that_does_not_resolve_is_waited_for_not_a_crash() -> None:
    target = DimseStore(DicomTarget("PEERS", "no-such-pacs.invalid", 104), connect_timeout_s=2)
    try:
        result = store(target, CTImageStorage)
    finally:
        target.close()
    assert not result.ok and result.unavailable and result.status_detail == "address-not-resolved"


def test_converting_for_the_pacs_prints_no_element_values() -> None:
    """pydicom's value checks warned with the values themselves (a UID, a name) on the partner's stderr
    as the gateway read and converted an instance for a PACS that asked for another transfer syntax."""
    uid = "1.2.3.4.5.6.7.8.9.0123456789"  # a component with a leading zero: not a valid UI
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # making the file warns of its own values: not the gateway's
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = CTImageStorage, uid
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, uid
        ds.PatientName = "Thistlewood^" + "Margery" * 10  # longer than PN allows
        out = BytesIO()
        ds.save_as(out, enforce_file_format=True)
    with pacs(syntax=ImplicitVRLittleEndian) as (port, received):
        target = DimseStore(DicomTarget("PEERS", "127.0.0.1", port), dimse_timeout_s=10)
        try:
            with warnings.catch_warnings(record=True) as said:
                warnings.simplefilter("always")
                result = target.store(Fetched(data=out.getvalue()), events_pb2.PartnerDelivery())
        finally:
            target.close()
    assert result.ok and received == [CTImageStorage]
    text = " ".join(str(w.message) for w in said)
    assert uid not in text and "PN component" not in text, text


def test_a_pacs_that_stops_part_way_through_a_pdu_ends_the_association_and_the_next_store_goes_on() -> None:
    """pynetdicom's requestor socket has no timeout once connected: the DUL's read of a PDU whose rest
    never came blocked for ever, and the next store waited for its turn for ever (the feed stopped)."""
    import socket as sockets
    import threading
    import time

    stalls: list[sockets.socket] = []

    def on_store(event: Any) -> int:
        raw = event.assoc.dul.socket.socket

        def half_a_pdu() -> None:  # after the response: an A-RELEASE-RQ's header and half its body
            time.sleep(0.3)
            raw.sendall(b"\x05\x00\x00\x00\x00\x04\x00\x00")
            stalls.append(raw)

        threading.Thread(target=half_a_pdu, daemon=True).start()
        return 0x0000

    ae = AE(ae_title="PEERS")
    for context in StoragePresentationContexts:
        ae.add_supported_context(context.abstract_syntax, ExplicitVRLittleEndian)
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    store = DimseStore(DicomTarget("PEERS", "127.0.0.1", port), dimse_timeout_s=2)
    store._ae.network_timeout = 2  # the gateway waits at least 60 s; the same wait, shorter
    try:
        assert store.store(Fetched(data=part10(CTImageStorage)), events_pb2.PartnerDelivery()).ok
        deadline = time.monotonic() + 5
        while not stalls:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        outcome: list[StoreResult] = []
        worker = threading.Thread(
            target=lambda: outcome.append(
                store.store(Fetched(data=part10(CTImageStorage)), events_pb2.PartnerDelivery())
            ),
            daemon=True,
        )
        worker.start()
        worker.join(30)
        assert outcome, "the store waited for ever behind a stalled read"
    finally:
        store.close()
        server.shutdown()
