"""Central gateways (`imx serve gateways`): imx runs the partner gateway for every partner registered
with an endpoint (`imx partners add ID --endpoint URL`), so a partner that gives a reachable PACS,
DICOMweb service or folder receives without running anything itself.

One worker thread per such partner runs the same store-and-forward loop as `imx gateway run`
(services/gateway/worker.py), with three differences:
- it reads the feed over the services' internal listener, in a consumer group of its own
  (`imx-central-gateway.<partner>`, outside the partner's `<partner>.` groups), so a gateway the
  partner also runs at its site is not sharing partitions with it, and the gateways service's user
  may use no group of the partner's;
- it fetches with a DICOMweb key of the "central" kind, issued when the worker starts and kept in
  memory only; issuing it replaces only earlier central keys, never the partner's own;
- its state (stored record, dead letters) is under `<IMX_GATEWAY_STATE_DIR>/<partner>`.

The partner list is re-read every `IMX_GATEWAY_REFRESH_S`: a partner added with an endpoint gets a
worker, a removed one (or one whose endpoint was cleared) loses it, a changed endpoint restarts it.
Each worker is its own thread with its own clients, so one partner's PACS being down (the worker
waits, partitions paused) delays no other partner. A worker that stops on an error no retry fixes
(its key refused, receipts not writable, Kafka unreachable) is started again after a pause.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from pathlib import Path

from pydantic import Field

from services.common.control_auth import control_auth
from services.common.control_server import ControlServer
from services.common.logs import configure_logging
from services.common.mongo import connect
from services.common.runtime import install_stop_signals
from services.common.service_access import central_gateway_group, kafka_client_config
from services.common.settings import ServiceSettings
from services.common.started_objects import freeze_started_objects
from services.common.static_membership import instance_id, leave_group
from services.common.stats import StatusSnapshot
from services.common.stores.partners import CENTRAL_KEY, PartnerStore
from services.common.topics import Topics
from services.gateway.errors import GatewayStopped
from services.gateway.fetch import Fetcher
from services.gateway.policy import RetryPolicy
from services.gateway.records import DeadLetters, StoredRecords
from services.gateway.runner import RECEIPTS_LINGER_MS, KafkaSignIn, feed_consumer, producer_for
from services.gateway.state_lock import state_folder_lock
from services.gateway.targets import open_store, parse_target
from services.gateway.worker import Counters, Gateway, GatewayOptions, state_paths

log = logging.getLogger(__name__)


class CentralGatewaySettings(ServiceSettings):
    grpc_port: int = Field(15056, ge=0, le=65535)
    gateway_state_dir: Path = Field(
        Path("var/gateways"), description="one folder per partner: temp files, stored record, dead letters"
    )
    gateway_refresh_s: float = Field(5.0, gt=0, description="how often the partner list is re-read")
    gateway_max_attempts: int = Field(10, ge=1, description="attempts the target answered before a dead letter")
    gateway_backoff_cap_s: float = Field(300.0, gt=0, description="longest wait between attempts, seconds")
    gateway_unreachable_cap_s: float = Field(
        30.0, gt=0, description="longest wait between attempts while the target cannot be reached, seconds"
    )
    gateway_window: int = Field(50, ge=1, description="in-flight window per partner")
    gateway_restart_s: float = Field(10.0, gt=0, description="pause before a stopped worker is started again")


STOP_TIMEOUT_S = 30.0  # how long a pause or a shutdown waits for the workers' stores in flight, all at once


def plan(running: Mapping[str, str], wanted: Mapping[str, str]) -> tuple[list[str], list[str]]:
    """(workers to stop, workers to start), from partner id -> endpoint of the running workers and of
    the partners that have an endpoint now. A changed endpoint is a stop and a start."""
    stop = sorted(p for p, endpoint in running.items() if wanted.get(p) != endpoint)
    start = sorted(p for p, endpoint in wanted.items() if running.get(p) != endpoint)
    return stop, start


def central_group(partner_id: str, topic_prefix: str = "") -> str:
    return central_gateway_group(partner_id, topic_prefix)


class PartnerWorker:
    """One partner's gateway on a thread of its own, restarted after a pause when it stops."""

    def __init__(
        self,
        partner_id: str,
        endpoint: str,
        settings: CentralGatewaySettings,
        issue_key: Callable[[str], str],
    ) -> None:
        self.partner_id, self.endpoint = partner_id, endpoint
        self._settings = settings
        self._issue_key = issue_key
        self._stop = threading.Event()
        self._gateway: Gateway | None = None
        self.restarts = 0
        self._thread = threading.Thread(target=self._run, name=f"gateway-{partner_id}", daemon=True)

    @property
    def counters(self) -> Counters:
        return self._gateway.counters if self._gateway is not None else Counters()

    def start(self) -> None:
        self._thread.start()

    def request_stop(self) -> None:
        self._stop.set()

    def stop(self, timeout_s: float = 30.0) -> None:
        self._stop.set()
        self._thread.join(timeout_s)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._session()
            except Exception as error:  # a stop no retry fixes, or Kafka/MongoDB away: start again later
                self.restarts += 1
                # A stop says why in words that carry no PHI (a busy state folder: who holds it, by process id).
                reason = str(error) if isinstance(error, GatewayStopped) else "failed (see error)"
                log.warning(
                    "central gateway worker stopped; starting it again",
                    extra={
                        "partner": self.partner_id,
                        "error": type(error).__name__,
                        "seconds": self._restart_s,
                        "reason": reason,
                    },
                )
                self._stop.wait(self._restart_s)

    @property
    def _restart_s(self) -> float:
        return self._settings.gateway_restart_s

    def _session(self) -> None:
        s = self._settings
        topics = Topics(s.topic_prefix)
        incoming, stored, dead = state_paths(s.gateway_state_dir / self.partner_id)
        config = kafka_client_config(s)  # the internal listener, as the gateways service's own user
        kafka = KafkaSignIn(
            s.kafka_bootstrap,
            config.get("sasl_plain_username"),
            config.get("sasl_plain_password"),
            config.get("security_protocol", "SASL_PLAINTEXT"),
            s.kafka_ssl_cafile,
        )
        with ExitStack() as stack:
            # An operator's dead-letter replay on this folder: this session waits for it (restarted later).
            stack.enter_context(state_folder_lock(s.gateway_state_dir / self.partner_id, "imx central gateway"))
            consumer = feed_consumer(
                s.kafka_bootstrap,
                central_group(self.partner_id, topics.prefix),
                f"imx-central-gateway-{self.partner_id}",
                s.gateway_window,
                config,
                # A replica of this service restarted under the same name takes its partners' feeds
                # back at once (services/common/static_membership.py), as the stages do.
                group_instance_id=instance_id(s.instance_id),
            )
            stack.callback(consumer.close, autocommit=False)
            # After the gateway's last commit (run() commits before it returns), before the close.
            stack.callback(leave_group, consumer)
            producer = producer_for(kafka, RECEIPTS_LINGER_MS)
            stack.callback(producer.close)
            fetcher = Fetcher(self._issue_key(self.partner_id), incoming)
            stack.callback(fetcher.close)
            store = open_store(parse_target(self.endpoint))
            stack.callback(store.close)
            records = StoredRecords(stored)
            stack.callback(records.close)
            options = GatewayOptions(
                receipts_topic=topics.receipts(self.partner_id),
                policy=RetryPolicy.capped(s.gateway_max_attempts, s.gateway_backoff_cap_s, s.gateway_unreachable_cap_s),
                window=s.gateway_window,
            )
            self._gateway = Gateway(consumer, producer, fetcher, store, records, DeadLetters(dead), options)
            self._gateway.subscribe(topics.partner(self.partner_id))
            log.info("central gateway worker started", extra={"partner": self.partner_id, "status": store.kind})
            self._gateway.run(self._stop)


class CentralGateways:
    """The workers, kept in step with the partners that have an endpoint."""

    def __init__(
        self,
        partners: PartnerStore,
        settings: CentralGatewaySettings,
        worker: Callable[[str, str], PartnerWorker] | None = None,
        stop_timeout_s: float = STOP_TIMEOUT_S,
    ) -> None:
        self._partners = partners
        self._settings = settings
        self._make = worker or self._default_worker
        self.workers: dict[str, PartnerWorker] = {}
        self._started = time.monotonic()
        self._paused, self._stop_timeout_s = False, stop_timeout_s
        self._stopping: list[PartnerWorker] = []  # asked to stop, perhaps still finishing a store
        # sync() runs on the service's thread, set_paused() on a control call's: one at a time.
        self._lock = threading.Lock()

    def _default_worker(self, partner_id: str, endpoint: str) -> PartnerWorker:
        return PartnerWorker(
            partner_id, endpoint, self._settings, lambda p: self._partners.issue_dicomweb_key(p, CENTRAL_KEY)
        )

    def sync(self) -> None:
        # Read outside the lock: a database that does not answer must not hold a pause up.
        listed = {} if self._paused else {p.partner_id: p.endpoint for p in self._partners.list() if p.endpoint}
        with self._lock:
            # Paused, no partner has a worker: each stopped one finished its in-flight store and committed.
            self._sync({} if self._paused else listed)

    def _sync(self, wanted: Mapping[str, str]) -> None:
        running = {p: w.endpoint for p, w in self.workers.items()}
        to_stop, to_start = plan(running, wanted)
        for partner_id in to_stop:
            self.workers.pop(partner_id).stop()
            log.info("central gateway worker removed", extra={"partner": partner_id})
        for partner_id in to_start:
            worker = self._make(partner_id, wanted[partner_id])
            self.workers[partner_id] = worker
            worker.start()

    def run(self, stop: threading.Event) -> None:
        try:
            while not stop.is_set():
                try:
                    self.sync()
                except Exception as error:  # MongoDB away: keep the workers running, look again later
                    log.warning("partner list not read", extra={"error": type(error).__name__})
                stop.wait(self._settings.gateway_refresh_s)
        finally:
            self.stop_all()

    def stop_all(self) -> None:
        with self._lock:
            self._stop_all()

    def _stop_all(self) -> None:
        self._stopping += self.workers.values()
        self.workers.clear()
        for worker in self._stopping:
            worker.request_stop()  # all at once: each finishes its in-flight store and commits
        deadline = time.monotonic() + self._stop_timeout_s
        for worker in self._stopping:
            worker.stop(max(0.0, deadline - time.monotonic()))
        # One still storing (a PACS slow to answer) is not paused yet: Status says so until it ends.
        self._stopping = [worker for worker in self._stopping if worker.alive]

    # --- imx.v1.Control ---------------------------------------------------------------------------

    def snapshot(self) -> StatusSnapshot:
        counters = [w.counters for w in list(self.workers.values())]
        return StatusSnapshot(
            service="gateways",
            paused=self._paused and not any(worker.alive for worker in self._stopping),
            processed=sum(c.stored + c.duplicates + c.superseded + c.skipped for c in counters),
            failed=sum(c.dead_lettered for c in counters),
            throughput_per_s=0.0,
            lag={},
            uptime_s=int(time.monotonic() - self._started),
        )

    def set_paused(self, paused: bool) -> None:
        """Paused: every worker is asked to stop, and waited for up to STOP_TIMEOUT_S (each finishes its
        in-flight store and commits; one still storing then keeps `snapshot().paused` False until it ends);
        none starts until resumed. Resumed, they start at the next look at the partner list."""
        with self._lock:
            self._paused = paused
            if paused:
                self._stop_all()


def serve(settings: CentralGatewaySettings | None = None, stop: threading.Event | None = None) -> None:
    """Run until `stop` is set (or SIGTERM/SIGINT when called from the main thread)."""
    settings = settings or CentralGatewaySettings()
    configure_logging("gateways", settings.log_level)
    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)  # its connection errors are our statuses
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        install_stop_signals(stop)
    client, db = connect(settings)
    try:
        gateways = CentralGateways(PartnerStore(db), settings)
        server = ControlServer(
            "gateways",
            gateways,
            host=settings.grpc_host,
            port=settings.grpc_port,
            auth=control_auth(db, settings.control_bootstrap_token_file),
        )
        server.start()
        server.mark_serving()
        log.info("service started", extra={"service": "gateways", "port": server.port})
        freeze_started_objects()
        try:
            gateways.run(stop)
        finally:
            server.stop()
    finally:
        client.close()


def main() -> None:
    serve()


if __name__ == "__main__":
    main()
