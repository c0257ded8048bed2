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

# Routing's cost is per fetch cycle, not per event: in `make profile` (2,000 CT) its handler was too
# small to show, and the Kafka client's fetch, poll and publish cycle was most of its CPU. At the
# bench's rate its small events never fill the bus's FETCH_MIN_BYTES, so a fetch returns when the wait
# is over: with the default 100 ms that is ~10 cycles a second of a few events each. A longer wait means
# fewer, fuller cycles, for at most this much more latency on this hop.
FETCH_MAX_WAIT_MS = 250


def routing_stage_spec(topics: Topics) -> StageSpec:
    return StageSpec(
        name="routing",
        group_id=f"{topics.prefix}imx-routing",
        topics=[topics.ingested],
        fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
    )


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
            routing_stage_spec(topics),
            lambda _producer, t: build_routing_handler(cached.current, t),
            control_auth(db, settings.control_bootstrap_token_file),
            extra_servicers=[register_routing_admin(store)],
            stop=stop,
            on_ready=on_ready,
        )
    finally:
        client.close()
