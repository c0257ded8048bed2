"""Wiring: the gateway's Kafka clients, fetcher, store and state from its settings; replay of dead
letters. Only the CLI (and tests) call these; nothing here runs at import."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kafka import KafkaConsumer, KafkaProducer

from services.common.bus import FETCH_MAX_WAIT_MS, FETCH_MIN_BYTES, LONG_LIVED_CLIENT
from services.common.kafka_access import group_prefix, sasl_client_config, tls_client_config
from services.common.kafka_partitioner import RememberingPartitioner
from services.common.started_objects import freeze_started_objects
from services.common.topics import Topics
from services.gateway.fetch import Fetcher
from services.gateway.policy import RetryPolicy
from services.gateway.receipts import (
    duplicate_receipt,
    receipt_record,
    store_receipt,
    stored_receipt_id,
    superseded_receipt,
)
from services.gateway.records import (
    DeadLetter,
    DeadLetters,
    SendAction,
    StoredRecords,
    UnreadableDeadLetter,
)
from services.gateway.state_lock import state_folder_lock
from services.gateway.targets import Store, Target, open_store
from services.gateway.worker import Counters, Gateway, GatewayOptions, attempt_once, state_paths
from services.proto_gen.imx.v1 import events_pb2

BOOTSTRAP_TIMEOUT_MS = 10_000  # kafka-python shows a refused SASL sign-in as this timeout: keep it short


@dataclass(frozen=True)
class KafkaSignIn:
    bootstrap: str
    username: str | None = None  # None: no SASL (the services' internal listener, development only)
    password: str | None = None
    security_protocol: str = "SASL_PLAINTEXT"
    ssl_cafile: Path | None = None  # the CA that signs the brokers' certificates; None: the system's

    def client_config(self) -> dict[str, str]:
        if self.username and self.password:
            return sasl_client_config(self.username, self.password, self.security_protocol, self.ssl_cafile)
        if self.security_protocol.upper() == "SSL":  # TLS without a sign-in: dropped, it went in plain text
            return {"security_protocol": "SSL", **tls_client_config("SSL", self.ssl_cafile)}
        return {}


@dataclass(frozen=True)
class GatewaySettings:
    partner_id: str
    target: Target
    kafka: KafkaSignIn
    dicomweb_key: str
    state_dir: Path
    topics: Topics = field(default_factory=Topics)
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    window: int = 50
    idle_exit_s: float | None = None


def consumer_for(settings: GatewaySettings) -> KafkaConsumer:
    return feed_consumer(
        settings.kafka.bootstrap,
        f"{group_prefix(settings.partner_id)}gateway",
        f"imx-gateway-{settings.partner_id}",
        settings.window,
        settings.kafka.client_config(),
    )


def feed_consumer(
    bootstrap: str, group_id: str, client_id: str, window: int, sign_in: Mapping[str, Any], **more: Any
) -> KafkaConsumer:
    """A gateway's consumer of a partner's feed: a partner's own gateway and imx's central ones alike
    (`more`: the central ones' static membership)."""
    return KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=group_id,
        client_id=client_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=window,
        # One store may take long for a large instance: leave room before the group gives up on us.
        max_poll_interval_ms=600_000,
        # A gateway that crashed holds its partitions until the broker gives up on it: a restarted one
        # waits this long before it gets them back (kafka-python's default is 45 s).
        session_timeout_ms=10_000,
        heartbeat_interval_ms=2_000,
        bootstrap_timeout_ms=BOOTSTRAP_TIMEOUT_MS,
        # As the stages' consumers (services/common/bus.py StageConsumer): the broker holds a fetch until
        # this much has arrived or the wait is over, so a gateway that keeps up with its feed gets several
        # deliveries per fetch, not one, for at most FETCH_MAX_WAIT_MS more latency.
        fetch_min_bytes=FETCH_MIN_BYTES,
        fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
        **LONG_LIVED_CLIENT,  # as the stages' clients: no sensors, no text per wait, back within a second
        **sign_in,
        **more,
    )


# The loop's receipts are sent by the flush before each commit (services/gateway/worker.py `_commit`,
# at least every commit_interval_s, 1 s): lingering until then puts them in one produce request, not
# one each. A replay waits for each receipt, so its producer does not linger.
RECEIPTS_LINGER_MS = 1_000


def producer_for(kafka: KafkaSignIn, linger_ms: int = 5) -> KafkaProducer:
    return KafkaProducer(
        bootstrap_servers=kafka.bootstrap,
        client_id="imx-gateway-receipts",
        acks="all",
        linger_ms=linger_ms,
        bootstrap_timeout_ms=BOOTSTRAP_TIMEOUT_MS,
        partitioner=RememberingPartitioner(),
        **LONG_LIVED_CLIENT,
        **kafka.client_config(),
    )


@contextmanager
def _closing_all(settings: GatewaySettings, holder: str) -> Iterator[tuple[Fetcher, Store, StoredRecords, DeadLetters]]:
    """What the gateway and a replay work with, the state folder locked for `holder` first."""
    incoming, stored, dead = state_paths(settings.state_dir)
    with ExitStack() as stack:
        stack.enter_context(state_folder_lock(settings.state_dir, holder))
        fetcher = Fetcher(settings.dicomweb_key, incoming)
        stack.callback(fetcher.close)
        store = open_store(settings.target)
        stack.callback(store.close)
        records = StoredRecords(stored)
        stack.callback(records.close)
        yield fetcher, store, records, DeadLetters(dead)


def run_gateway(
    settings: GatewaySettings, stop: threading.Event, on_progress: Callable[[Counters], None] | None = None
) -> Counters:
    """Run until `stop` (or idle for `idle_exit_s`); raises kafka errors on a failed sign-in and
    GatewayStopped for conditions no retry fixes."""
    with ExitStack() as stack:
        # The state folder first: one in use is said at once, not after Kafka's sign-in.
        fetcher, store, records, dead_letters = stack.enter_context(_closing_all(settings, "imx gateway run"))
        consumer = consumer_for(settings)
        stack.callback(consumer.close, autocommit=False)
        producer = producer_for(settings.kafka, RECEIPTS_LINGER_MS)
        stack.callback(producer.close)
        options = GatewayOptions(
            receipts_topic=settings.topics.receipts(settings.partner_id),
            policy=settings.policy,
            window=settings.window,
            idle_exit_s=settings.idle_exit_s,
        )
        gateway = Gateway(consumer, producer, fetcher, store, records, dead_letters, options, on_progress)
        gateway.subscribe(settings.topics.partner(settings.partner_id))
        freeze_started_objects()
        return gateway.run(stop)


@dataclass
class ReplayOutcome:
    delivery_id: str
    ok: bool
    status: str


def _letter_or_why(dead_letters: DeadLetters, delivery_id: str) -> DeadLetter | str:
    """The dead letter, or why there is none to replay."""
    try:
        letter = dead_letters.get(delivery_id)
    except UnreadableDeadLetter:
        return "unreadable-dead-letter"
    return "no-such-dead-letter" if letter is None else letter


def _send_receipt(producer: KafkaProducer, topic: str, receipt: events_pb2.DeliveryReceipt) -> None:
    """One receipt, acknowledged before the replay goes on."""
    producer.send(topic, **receipt_record(receipt)).get(timeout=60)


def replay_dead_letters(
    settings: GatewaySettings,
    delivery_ids: list[str] | None,
    publish_receipts: bool,
    now_ms: Callable[[], int],
) -> list[ReplayOutcome]:
    """Fetch and store dead letters again (all when `delivery_ids` is None); an entry is removed when
    stored. With `publish_receipts`, a STORED receipt goes to the receipts topic for each."""
    outcomes: list[ReplayOutcome] = []
    receipts_topic = settings.topics.receipts(settings.partner_id)
    with ExitStack() as stack:
        fetcher, store, records, dead_letters = stack.enter_context(
            _closing_all(settings, "imx gateway dead-letters replay")
        )
        producer = None
        if publish_receipts:
            producer = producer_for(settings.kafka)
            stack.callback(producer.close)
        letters: list[DeadLetter | str] = (
            list(dead_letters) if delivery_ids is None else [_letter_or_why(dead_letters, i) for i in delivery_ids]
        )
        wanted_ids: list[str | None] = list(delivery_ids) if delivery_ids is not None else [None] * len(letters)
        for wanted, letter in zip(wanted_ids, letters, strict=True):
            if isinstance(letter, str):
                outcomes.append(ReplayOutcome(str(wanted), False, letter))
                continue
            delivery = letter.delivery()
            judged = records.judge(delivery)
            if judged.action is SendAction.DUPLICATE:
                # Stored after it was dead-lettered (read again after a kill, before its offset was
                # committed), or by a replay killed before its receipt went out: not sent to the target a
                # second time, and its STORED receipt again (the recorded id: the same receipt if it went).
                if producer is not None:
                    _send_receipt(producer, receipts_topic, duplicate_receipt(delivery, store.kind, judged))
                dead_letters.remove(letter.delivery_id)
                outcomes.append(ReplayOutcome(letter.delivery_id, True, "already-stored"))
                continue
            if judged.action is SendAction.SUPERSEDED:
                # A newer send of the instance was stored since it was dead-lettered: not put back over it.
                if producer is not None:
                    _send_receipt(producer, receipts_topic, superseded_receipt(delivery, store.kind, now_ms()))
                dead_letters.remove(letter.delivery_id)
                outcomes.append(ReplayOutcome(letter.delivery_id, True, "superseded"))
                continue
            result, _refused = attempt_once(fetcher, store, delivery)
            outcomes.append(ReplayOutcome(letter.delivery_id, result.ok, result.status_detail))
            if not result.ok:
                continue
            stored_at = now_ms()
            records.add(
                letter.delivery_id,
                delivery.blob.sha256,
                delivery.instance.study_instance_uid,
                stored_at,
                judged.version,
                stored_receipt_id(delivery, judged),
            )
            if producer is not None:
                receipt = store_receipt(
                    delivery, store.kind, judged, letter.attempts + 1, stored_at, result.status_detail
                )
                _send_receipt(producer, receipts_topic, receipt)
            dead_letters.remove(letter.delivery_id)
    return outcomes
