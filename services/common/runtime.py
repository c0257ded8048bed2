"""The thin shell shared by every consuming service: wiring, signals, graceful stop.

Only entry points call this; it builds the clients from settings and hands them to the service.
SIGTERM/SIGINT set a stop flag: the batch in flight finishes, its outputs are acknowledged and its
offsets committed, then the process exits.
"""

from __future__ import annotations

import logging
import signal
import threading
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from services.common.bus import (
    FETCH_MAX_WAIT_MS,
    FETCH_MIN_BYTES,
    METADATA_MAX_AGE_MS,
    BusProducer,
    Handler,
    StageConsumer,
)
from services.common.control_auth import ControlAuth
from services.common.control_server import CONTROL_MAX_REQUEST_BYTES, ControlServer, ServicerRegistration
from services.common.logs import configure_logging
from services.common.service_access import ensure_pipeline_topics, kafka_client_config
from services.common.settings import ServiceSettings
from services.common.started_objects import freeze_started_objects
from services.common.static_membership import instance_id
from services.common.stats import StageStats, StatusSnapshot
from services.common.telemetry import setup_telemetry
from services.common.topics import Topics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StageSpec:
    """What makes one stage different from another."""

    name: str
    group_id: str
    topics: Sequence[str] = ()
    pattern: str | None = None
    # How long the broker may hold a fetch for `fetch_min_bytes` to arrive. A stage whose cost is per
    # batch rather than per event (audit) asks for more.
    fetch_max_wait_ms: int = FETCH_MAX_WAIT_MS
    fetch_min_bytes: int = FETCH_MIN_BYTES


class StageControl:
    """Adapts StageStats to the Control service."""

    def __init__(self, stats: StageStats) -> None:
        self._stats = stats

    def snapshot(self) -> StatusSnapshot:
        return self._stats.snapshot()

    def set_paused(self, paused: bool) -> None:
        self._stats.set_paused(paused)


def metadata_max_age_ms(spec: StageSpec, settings: ServiceSettings) -> int:
    """A pattern's look at the broker reads every topic's metadata: it comes as often as the settings say
    new partner topics must be found, a list's as often as the bus's default."""
    return round(settings.partner_topic_discovery_s * 1000) if spec.pattern else METADATA_MAX_AGE_MS


def install_stop_signals(stop: threading.Event) -> None:
    def _handler(signum: int, _frame: object) -> None:
        log.info("stop requested; finishing the batch in flight", extra={"status": signal.Signals(signum).name})
        stop.set()

    signal.signal(signal.SIGTERM, _handler)
    signal.signal(signal.SIGINT, _handler)


def failure_site(exc: BaseException) -> str:
    """Where `exc` was raised: file (from the package root) and line of its innermost frame; code, not data."""
    # limit=-1: the innermost frame, whatever sys.tracebacklimit says (a positive limit keeps the outermost).
    frames = traceback.extract_tb(exc.__traceback__, limit=-1)
    if not frames:
        return ""
    path = frames[-1].filename
    for root in ("/services/", "/site-packages/"):
        if root in path:
            path = path[path.rindex(root) + 1 :]
            break
    return f"{path}:{frames[-1].lineno}"


def run_stage(
    settings: ServiceSettings,
    spec: StageSpec,
    build_handler: Callable[[BusProducer, Topics], Handler],
    control_auth: ControlAuth,
    extra_servicers: Sequence[ServicerRegistration] = (),
    stop: threading.Event | None = None,
    on_ready: Callable[[ControlServer], None] | None = None,
    on_consumer: Callable[[StageConsumer], None] | None = None,
    control_max_request_bytes: int = CONTROL_MAX_REQUEST_BYTES,
    http_serving: bool = False,
) -> None:
    """`http_serving`: the service's HTTP API, started before this, answers (ControlServer.HTTP_READY)."""
    configure_logging(spec.name, settings.log_level)
    telemetry = setup_telemetry(spec.name, settings.otlp_endpoint)
    topics = Topics(settings.topic_prefix)
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        install_stop_signals(stop)
    kafka = kafka_client_config(settings)
    stats = StageStats(service=spec.name)
    # The control server answers from the start (its liveness check says the process is alive; readiness
    # waits until the stage consumes): a stage started while the broker is away is not restarted for it.
    server = ControlServer(
        spec.name,
        StageControl(stats),
        host=settings.grpc_host,
        port=settings.grpc_port,
        extra=extra_servicers,
        auth=control_auth,
        max_request_bytes=control_max_request_bytes,
    )
    server.start()
    if http_serving:
        server.mark_http_serving()
    producer: BusProducer | None = None
    consumer: StageConsumer | None = None
    try:
        ensure_pipeline_topics(settings, topics, stop, kafka)
        if stop.is_set():  # asked to stop while waiting for the broker: nothing started yet, so nothing to finish
            log.info("service stopped before it started", extra={"service": spec.name})
            return
        producer = BusProducer(settings.kafka_bootstrap, client_id=f"imx-{spec.name}", client_config=kafka)
        consumer = StageConsumer(
            bootstrap=settings.kafka_bootstrap,
            group_id=spec.group_id,
            topics=spec.topics,
            pattern=spec.pattern,
            producer=producer,
            dead_letter_topic=topics.dead_letter,
            stage=spec.name,
            stats=stats,
            max_batch=settings.max_batch,
            stuck_after_s=settings.stuck_after_s,
            lane_of=topics.lane_of,
            client_config=kafka,
            fetch_min_bytes=spec.fetch_min_bytes,
            fetch_max_wait_ms=spec.fetch_max_wait_ms,
            metadata_max_age_ms=metadata_max_age_ms(spec, settings),
            group_instance_id=instance_id(settings.instance_id),
        )
        if on_consumer:
            on_consumer(consumer)
        handler = build_handler(producer, topics)
        server.mark_serving()
        log.info("service started", extra={"service": spec.name, "port": server.port})
        if on_ready:
            on_ready(server)
        freeze_started_objects()
        consumer.run(handler, stop, health=server)
    except Exception as exc:
        # The traceback's text may quote input values and is not logged; its type and the code line
        # it came from are, so a service that dies says why (the supervisor starts it again).
        log.exception("service failed", extra={"service": spec.name, "where": failure_site(exc)})
        raise
    finally:
        server.stop()
        if consumer is not None:
            consumer.close()
        if producer is not None:
            producer.close()
        telemetry.shutdown()
        if producer is not None:
            log.info("service stopped", extra={"service": spec.name})
