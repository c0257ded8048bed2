"""The C-STORE response must reach the sender even when pynetdicom's reactor takes it off the queue.

`DimseStore._send` pauses the association's reactor before sending, but the pause is an unlocked flag
that can be stale right after the previous send resumed the reactor (back-to-back sends from
fetch-ahead). Here the pause is defeated on every send, so the reactor polls the DIMSE queue while the
answer arrives: before the fix each lost answer cost the whole DIMSE timeout. (Since the sender reads
plain responses off the socket itself, services/gateway/dimse_exchange.py, only answers pynetdicom has
to read still come through the queue, with the pause; this keeps the whole path honest either way.)"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from services.gateway.dimse_store import DimseStore
from services.gateway.fetched import Fetched
from services.gateway.targets import DicomTarget
from services.proto_gen.imx.v1 import events_pb2
from tests.integration.gateway.conftest import Instance
from tests.integration.gateway.peers import storescp


class StalePause(threading.Event):
    """A checkpoint whose clear() leaves the reactor running but reads as paused: the window in which
    the reactor has passed its checkpoint and not yet reset `_is_paused`, on every send."""

    def __init__(self, assoc: Any) -> None:
        super().__init__()
        self._assoc = assoc
        self.set()

    def clear(self) -> None:
        self._assoc._is_paused = True


def test_every_answer_reaches_the_sender_while_the_reactor_keeps_polling(
    ct_study: list[Instance], tmp_path: Path
) -> None:
    files = []
    for instance in ct_study:
        path = tmp_path / f"{instance.sop}.dcm"
        path.write_bytes(instance.data)
        files.append(path)
    with storescp(tmp_path) as pacs:
        store = DimseStore(DicomTarget("STORESCP", "127.0.0.1", pacs.port), dimse_timeout_s=5)
        try:
            results = []
            for path in files * 3:
                assoc: Any = store._assoc
                if assoc is not None and not isinstance(assoc._reactor_checkpoint, StalePause):
                    assoc._reactor_checkpoint = StalePause(assoc)
                results.append(store.store(Fetched(data=path.read_bytes()), events_pb2.PartnerDelivery()))
        finally:
            store.close()
        received = len(pacs.files())
    failures = [r.status_detail for r in results if not r.ok]
    assert failures == [], "every C-STORE answered; none waited out the DIMSE timeout"
    assert received == 3 * len(ct_study)
    assert store.associations == 1, "one association for all, never dropped after a lost answer"
