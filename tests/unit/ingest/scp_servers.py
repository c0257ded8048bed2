"""Ingest's C-STORE SCP on a free port in a thread, for the unit tests of its wire encoding."""

from __future__ import annotations

import socketserver
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, _config, dimse_messages, evt
from pynetdicom.events import Event
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from services.ingest.scp import IngestRequestHandler, build_ae, receive_to_files
from services.ingest.settings import IngestSettings


def receive_to_files_for_this_test(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`receive_to_files(folder)`, the process-wide pynetdicom names it sets restored after the test."""
    monkeypatch.setattr(_config, "STORE_RECV_CHUNKED_DATASET", False)
    for name in ("NamedTemporaryFile", "create_file_meta", "write_file_meta_info"):
        monkeypatch.setattr(dimse_messages, name, getattr(dimse_messages, name))
    receive_to_files(folder)


def serve_stores(
    settings: IngestSettings,
    store: Callable[[Event], Dataset],
    request_handler: type[socketserver.BaseRequestHandler] = IngestRequestHandler,
) -> tuple[ThreadedAssociationServer, int]:
    """Ingest's AE (and by default its request handler) answering C-STOREs with `store`, serving in a
    daemon thread; the server (to shut down) and its port."""
    ae = build_ae(settings)
    server = ae.make_server(
        ("127.0.0.1", 0),
        evt_handlers=[(evt.EVT_C_STORE, store)],
        server_class=ThreadedAssociationServer,
        request_handler=request_handler,
    )
    ae._servers.append(server)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, server.server_address[1]


def associate(server: ThreadedAssociationServer) -> Any:
    """An association from a pynetdicom sender (Verification and CT Image Storage) to `server`."""
    ae = AE(ae_title="SENDER")
    ae.add_requested_context(Verification)
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", server.server_address[1], ae_title="IMX")
    assert assoc.is_established
    return assoc


def small_ct(size: int) -> Dataset:
    """A CT data set with `size` bytes of pixel data, explicit VR little endian."""
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.BitsAllocated = 16
    ds.PixelRepresentation = 0
    ds.PixelData = b"\x01\x02" * (size // 2)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.set_original_encoding(False, True)
    return ds
