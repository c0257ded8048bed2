"""Entry point: `python -m services.routing` or `imx serve routing`."""

from __future__ import annotations

import threading
from collections.abc import Callable

from services.common.control_auth import control_auth
from services.common.control_server import ControlServer
from services.common.mongo import connect
from services.common.runtime import StageSpec, run_stage
from services.common.topics import Topics
from services.routing.admin import register_routing_admin
from services.routing.handler import build_routing_handler
from services.routing.settings import RoutingSettings
from services.routing.store import CachedRoutes, RouteStore


def serve(
    settings: RoutingSettings | None = None,
    stop: threading.Event | None = None,
    on_ready: Callable[[ControlServer], None] | None = None,
) -> None:
    settings = settings or RoutingSettings()
    client, db = connect(settings)
    store = RouteStore(db)
    topics = Topics(settings.topic_prefix)
    cached = CachedRoutes(store, settings.routes_refresh_s)
    try:
        run_stage(
            settings,
            StageSpec(name="routing", group_id=f"{settings.topic_prefix}imx-routing", topics=[topics.ingested]),
            lambda _producer, t: build_routing_handler(cached.current, t),
            control_auth(db, settings.control_bootstrap_token_file),
            extra_servicers=[register_routing_admin(store)],
            stop=stop,
            on_ready=on_ready,
        )
    finally:
        client.close()
