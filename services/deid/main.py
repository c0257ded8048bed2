"""Entry point: `python -m services.deid` or `imx serve deid`."""

from __future__ import annotations

import threading
from collections.abc import Callable

from pymongo.errors import PyMongoError

from services.common.blob_store import LocalBlobStore
from services.common.control_auth import control_auth
from services.common.control_server import ControlServer
from services.common.messages import TransientError
from services.common.mongo import connect
from services.common.runtime import StageSpec, run_stage
from services.common.stores.partners import PartnerStore
from services.common.topics import Topics
from services.deid.admin import PREVIEW_MAX_REQUEST_BYTES, register_profile_admin
from services.deid.handler import DeidHandler
from services.deid.profile_store import CachedProfiles, ProfileStore
from services.deid.settings import DeidSettings

PROFILES_REFRESH_S = 2.0


class RecipientKeys:
    """Partners' pseudonymisation keys, cached: a key never changes except by a documented rotation,
    which restarts the service."""

    def __init__(self, store: PartnerStore) -> None:
        self._store = store
        self._keys: dict[str, bytes] = {}

    def get(self, partner_id: str) -> bytes | None:
        if partner_id not in self._keys:
            try:
                key = self._store.pseudonym_key(partner_id)
            except PyMongoError as exc:  # retried, not dead-lettered: the input is fine
                raise TransientError(f"partner keys unavailable: {type(exc).__name__}") from exc
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
    profiles = ProfileStore(db)
    cached = CachedProfiles(profiles, PROFILES_REFRESH_S)
    blobs = LocalBlobStore(settings.blob_dir)
    topics = Topics(settings.topic_prefix)
    try:
        run_stage(
            settings,
            StageSpec(name="deid", group_id=f"{settings.topic_prefix}imx-deid", topics=topics.routed_lanes),
            lambda _producer, t: DeidHandler(
                cached.lookup,
                keys.get,
                blobs,
                t,
                settings.blob_dir,
                settings.max_inflated_bytes,
                splice=settings.deid_splice,
            ),
            control_auth(db, settings.control_bootstrap_token_file),
            extra_servicers=[register_profile_admin(profiles, keys.get)],
            stop=stop,
            on_ready=on_ready,
            control_max_request_bytes=PREVIEW_MAX_REQUEST_BYTES,
        )
    finally:
        client.close()
