"""Entry point: `python -m services.deid` or `imx serve deid`."""

from __future__ import annotations

import threading
from collections.abc import Callable

from services.common.blob_store import LocalBlobStore
from services.common.control_server import ControlServer
from services.common.mongo import connect
from services.common.runtime import StageSpec, run_stage
from services.common.stores.partners import PartnerStore
from services.common.topics import Topics
from services.deid.engine import BUILTIN_PROFILES
from services.deid.handler import build_deid_handler
from services.deid.settings import DeidSettings


class RecipientKeys:
    """Partners' pseudonymisation keys, cached: a key never changes except by a documented rotation,
    which restarts the service."""

    def __init__(self, store: PartnerStore) -> None:
        self._store = store
        self._keys: dict[str, bytes] = {}

    def get(self, partner_id: str) -> bytes | None:
        if partner_id not in self._keys:
            key = self._store.pseudonym_key(partner_id)
            if key is None:
                return None
            self._keys[partner_id] = key
        return self._keys[partner_id]


def serve(
    settings: DeidSettings | None = None,
    stop: threading.Event | None = None,
    on_ready: Callable[[ControlServer], None] | None = None,
) -> None:
    settings = settings or DeidSettings()
    client, db = connect(settings)
    keys = RecipientKeys(PartnerStore(db))
    blobs = LocalBlobStore(settings.blob_dir)
    topics = Topics(settings.topic_prefix)
    try:
        run_stage(
            settings,
            StageSpec(name="deid", group_id=f"{settings.topic_prefix}imx-deid", topics=[topics.routed]),
            lambda _producer, t: build_deid_handler(BUILTIN_PROFILES, keys.get, blobs, t),
            stop=stop,
            on_ready=on_ready,
        )
    finally:
        client.close()
