"""At-least-once Kafka plumbing on kafka-python.

A stage is `consume → handler → publish outputs → commit`. Offsets are committed only after every
output of the batch is acknowledged by the broker (acks=all, idempotent producer), at most every
five seconds while the stage is busy and at once when it is idle or stops, and only from the polling
thread between two polls: kafka-python 3.x runs rebalance listeners on its IO thread, where a
blocking commit raises. A crash replays what was not committed yet (the batch in flight, and at most
about five seconds of batches before it); handlers are idempotent (deterministic event ids), so a
replay is harmless.

A broker that cannot be reached (down, restarting, partitioned) stops nothing: the batch in flight
is read again from where it began, nothing of it is committed, the stage reports NOT_SERVING and
retries with capped exponential backoff until the broker answers again.
"""

from __future__ import annotations

import contextlib
import logging
import selectors
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from types import MappingProxyType
from typing import Any, Protocol

from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import (
    FencedInstanceIdError,
    InvalidReplicationFactorError,
    KafkaError,
    KafkaTimeoutError,
    NoError,
    TopicAlreadyExistsError,
    TopicAuthorizationFailedError,
    for_code,
)
from kafka.structs import OffsetAndMetadata, TopicPartition
from opentelemetry import context as otel_context
from opentelemetry import trace
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_when_event_set, wait_exponential

from services.common.consumer_spans import start_consumer_span
from services.common.failures import classify, is_transient
from services.common.kafka_partitioner import RememberingPartitioner
from services.common.lanes import LaneGate
from services.common.messages import IncomingMessage, OutgoingMessage, PhiSafeError, TransientError
from services.common.positions import ConsumerPositions
from services.common.publish_refusals import (
    RECORD_REFUSALS,
    BrokerUnavailable,
    RecordRefused,
    publish_apart,
    publish_failure,
)
from services.common.static_membership import ReplicaNameTaken, leave_group, name_taken
from services.common.stats import StageStats
from services.common.stuck_partitions import STUCK_AFTER_S, FailingBatches, StuckPartitions
from services.common.topic_metadata import await_topic_metadata
from services.common.tracing_headers import (
    inject_trace_headers,
    trace_headers,
    with_trace_headers,
)

log = logging.getLogger(__name__)

# Partner topics may carry a whole DICOM instance inline; keep in step with the broker's message.max.bytes.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024

# The longest wait between attempts to reach a broker that went away. kafka-python's default is 30 s
# (the Java client's is 1 s): its waits double from 50 ms, so after an outage of ten seconds or more a
# client sat up to half a minute beside a broker that was back, its stage NOT_SERVING and idle. A try a
# second is nothing to a broker.
RECONNECT_BACKOFF_MAX_MS = 1_000

Handler = Callable[[IncomingMessage], Sequence[OutgoingMessage]]


class QuietSelector(selectors.DefaultSelector):
    """The platform's selector, except that a file object not registered costs no text.

    kafka-python's `NetworkSelector.register_event` (kafka/net/selector.py) asks `get_key` for a
    socket before each wait on it and registers the socket in its `except KeyError`: on most waits the
    socket is not registered. The standard `get_key` builds that KeyError's message from `repr(socket)`,
    twice (its mapping formats it, then `get_key` again), and a socket's repr asks the kernel for both
    addresses: ~20 us per miss against ~1 us here (timeit, one connected TCP socket, load ~10), and
    ~8% of the samples of ingest's producer network thread in a py-spy profile of `make bench`. The
    KeyError carries the object; it is formatted only if printed. Relies on `_fd_to_key` and
    `_fileobj_lookup` of CPython's `_BaseSelectorImpl` (3.4 to 3.13)."""

    def get_key(self, fileobj: Any) -> selectors.SelectorKey:
        if self.get_map() is None:
            raise RuntimeError("Selector is closed")
        try:
            return self._fd_to_key[self._fileobj_lookup(fileobj)]  # type: ignore[attr-defined]
        except KeyError:
            raise KeyError(fileobj) from None


# What every long-lived client (the stages' consumers and producers, the gateways') is built with: no
# sensors, since nothing reads them and they cost ~7% of a producing service's CPU (StageStats measures
# what the Control service reports); no text per wait (QuietSelector); a broker that went away tried at
# least once a second.
LONG_LIVED_CLIENT: Mapping[str, Any] = MappingProxyType(
    {"metrics_enabled": False, "selector": QuietSelector, "reconnect_backoff_max_ms": RECONNECT_BACKOFF_MAX_MS}
)


class TopicsNotCreated(PhiSafeError, RuntimeError):
    """The cluster refused to create topics as configured (more copies than it has brokers)."""


def broker_unreachable(exc: BaseException) -> bool:
    """kafka-python marks what a later attempt may fix as retriable: no connection, a timeout, no
    coordinator or leader yet. Those say the broker is away, not that the input is bad."""
    if isinstance(exc, BrokerUnavailable):
        return True
    return isinstance(exc, KafkaError) and bool(exc.retriable)


# The longest wait between two tries of something a dead broker failed: a stage's cycle, a starting
# service's topic creation. tenacity's wait is not cut short when the broker returns, so a long cap is
# time spent idle beside a broker that is back. With a 30 s cap an idle stage said SERVING 8.7-9.1 s after
# a broker down ~25 s was back, with 2 s 0.4 s (test_bus_outage's idle test with the defaults); a
# service starting while its broker was down 70 or 100 s created its topics 11.1 and 21.1 s after the
# broker answered, with 2 s 1.1 and 3.9 s (LateBroker of test_ensure_topics_waits, 2026-12-06).
BROKER_RETRY_MAX_S = 2.0


def ensure_topics(
    bootstrap: str,
    names: Iterable[str],
    partitions: int,
    stop: threading.Event | None = None,
    max_backoff_s: float = BROKER_RETRY_MAX_S,
    attempt_timeout_ms: int = 10_000,
    client_config: Mapping[str, str] | None = None,
    replication_factor: int = 1,
    within_s: float | None = None,
    retention_ms: Mapping[str, int] | None = None,
) -> list[str] | None:
    """Create topics that do not exist yet, `replication_factor` copies each (`topic_configs`; a topic
    named in `retention_ms` keeps its records that long, the others the broker's retention); existing ones
    are left as they are. Returns those this call created.

    A broker that does not answer (down, still starting) is waited for, retrying with capped exponential
    backoff, rather than ending the process that is starting; once `stop` is set, or `within_s` seconds
    have passed (a caller gives one or the other), it returns None instead (told apart from success by the
    return: the deadline may pass just after the answer). A topic this service's user may not create is
    not its own: another service (or the admin) creates it."""
    if stop is not None and within_s is not None:
        raise ValueError("ensure_topics takes a stop event or a time limit, not both")
    wanted = list(dict.fromkeys(names))
    stop = stop or threading.Event()
    deadline = threading.Timer(within_s, stop.set) if within_s is not None else None
    if deadline is not None:
        deadline.daemon = True
        deadline.start()

    def waiting(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        log.warning(
            "broker unreachable; waiting to create topics",
            extra={"error": type(error).__name__, "seconds": round(state.upcoming_sleep, 1)},
        )

    retrying = Retrying(
        retry=retry_if_exception(broker_unreachable),
        wait=wait_exponential(multiplier=1.0, max=max_backoff_s),
        stop=stop_when_event_set(stop),
        sleep=stop.wait,  # type: ignore[arg-type]  # returns a bool tenacity ignores; a stop ends the wait
        before_sleep=waiting,
        reraise=True,
    )
    try:
        return retrying(
            _create_missing_topics,
            bootstrap,
            wanted,
            partitions,
            replication_factor,
            attempt_timeout_ms,
            client_config or {},
            dict(retention_ms or {}),
        )
    except KafkaError as error:
        if not (stop.is_set() and broker_unreachable(error)):
            raise
        return None
    finally:
        if deadline is not None:
            deadline.cancel()


def topic_configs(replication_factor: int, retention_ms: int | None = None) -> dict[str, str]:
    """A created topic's settings: messages up to MAX_MESSAGE_BYTES and, when it is replicated, an
    acknowledgement (acks=all) that means all but one copy have it: one broker may be lost, or be down
    for maintenance, without losing an acknowledged event or stopping the writers. `retention_ms`: how
    long it keeps its records (-1: until deleted), instead of the broker's retention (the dead letters)."""
    configs = {"max.message.bytes": str(MAX_MESSAGE_BYTES)}
    if retention_ms is not None:
        configs["retention.ms"] = str(retention_ms)
    if replication_factor > 1:
        configs["min.insync.replicas"] = str(replication_factor - 1)
    return configs


def _create_missing_topics(
    bootstrap: str,
    names: list[str],
    partitions: int,
    replication_factor: int,
    timeout_ms: int,
    client_config: Mapping[str, str],
    retention_ms: Mapping[str, int],
) -> list[str]:
    admin = KafkaAdminClient(
        bootstrap_servers=bootstrap,
        client_id="imx-admin",
        selector=QuietSelector,
        bootstrap_timeout_ms=timeout_ms,
        request_timeout_ms=timeout_ms,
        **client_config,
    )
    try:
        existing = set(admin.list_topics())
        wanted = [
            NewTopic(
                name,
                num_partitions=partitions,
                replication_factor=replication_factor,
                topic_configs=topic_configs(replication_factor, retention_ms.get(name)),
            )
            for name in names
            if name not in existing
        ]
        created: list[str] = []
        if wanted:
            result = admin.create_topics(wanted, raise_errors=False)
            for topic in result.get("topics", []):
                error = for_code(topic["error_code"])
                if error is NoError:
                    created.append(topic["name"])
                # Already there: another replica won the race. Not authorized: not this service's topic.
                elif error is InvalidReplicationFactorError:
                    raise TopicsNotCreated(
                        f"topics need {replication_factor} copies and the cluster has fewer brokers: "
                        "set IMX_TOPIC_REPLICATION_FACTOR (the chart's kafka.topicReplicationFactor) to at most "
                        "the number of brokers"
                    )
                elif error not in (TopicAlreadyExistsError, TopicAuthorizationFailedError):
                    raise error(topic.get("error_message") or topic["name"])
        return created
    finally:
        admin.close()


PRODUCER_CLOSE_TIMEOUT_S = 10.0


class BusProducer:
    """Publishes batches and returns only when the broker acknowledged all of them."""

    def __init__(
        self,
        bootstrap: str,
        client_id: str = "imx",
        client_config: Mapping[str, str] | None = None,
        linger_ms: int = 5,
    ) -> None:
        def new_producer() -> KafkaProducer:
            return KafkaProducer(
                **(client_config or {}),
                bootstrap_servers=bootstrap,
                client_id=client_id,
                acks="all",
                enable_idempotence=True,
                # `publish` flushes, so this matters only for `publish_soon`: how long its messages wait for company.
                linger_ms=linger_ms,
                batch_size=256 * 1024,
                max_request_size=MAX_MESSAGE_BYTES,
                retries=2**31 - 1,
                partitioner=RememberingPartitioner(),
                **LONG_LIVED_CLIENT,
            )

        self._new_producer = new_producer
        self._producer = new_producer()
        self._renewing = threading.Lock()
        self._closed = False

    @property
    def ready(self) -> bool:
        """Always: a BusProducer exists only once the broker answered (ProducerWhenReady waits for that)."""
        return True

    def publish(self, messages: Sequence[OutgoingMessage], timeout_s: float = 60.0) -> None:
        """Send all and wait for every acknowledgement. Raises TransientError when the broker fails or
        refuses this producer (BrokerUnavailable when it is away), RecordRefused when it refuses a record
        for what it is (publish_refusals.py)."""
        producer = self._producer
        futures = []
        errors: list[KafkaError] = []
        for message in messages:
            # Messages built inside a consumer span already carry that span's context.
            headers = dict(message.headers)
            if "traceparent" not in headers:
                headers = inject_trace_headers(headers)
            try:
                futures.append(
                    producer.send(message.topic, value=message.value, key=message.key, headers=list(headers.items()))
                )
            except RECORD_REFUSALS as exc:  # the client's own size check: nothing of it was queued
                errors.append(exc)
            except KafkaError as exc:  # no metadata for the topic within max_block_ms: the broker is away
                self._renew_if_stopped(producer)
                raise publish_failure([exc]) from exc
        if futures:
            try:
                producer.flush(timeout=timeout_s)
            except KafkaError as exc:
                raise publish_failure([exc]) from exc
            for future in futures:
                try:
                    future.get(timeout=timeout_s)
                except KafkaError as exc:
                    errors.append(exc)
        if errors:
            self._renew_if_stopped(producer)
            raise publish_failure(errors) from errors[0]

    def _renew_if_stopped(self, producer: KafkaProducer) -> None:
        """kafka-python (3.0) stops an idempotent producer for good at the first record the broker refuses
        for a reason other than its own availability (a record too large for its topic, a topic it may not
        write): every batch sent after it, to any topic, fails with that error. So a producer in that state
        is replaced; what it still held was never acknowledged, and its senders are told so."""
        manager = getattr(producer, "_transaction_manager", None)
        if manager is None or not manager.has_fatal_error():
            return
        with self._renewing:
            if self._producer is not producer or self._closed:
                return  # another thread renewed it already, or closed it: nothing is sent any more
            self._producer = self._new_producer()
        log.warning("producer renewed: the broker refused a record and the client stopped the old one")
        _close_producer(producer, timeout_s=0)  # nothing it holds can be acknowledged any more

    def publish_soon(self, messages: Sequence[OutgoingMessage], on_error: Callable[[BaseException], None]) -> None:
        """Hand messages to the producer without waiting for the broker: they leave with the next batch
        (after `linger_ms`, or at the next `publish`, or at `close`), many in one produce request, still
        acks=all and idempotent. For records of facts that nothing downstream of the caller waits on and
        whose loss the caller only reports (a partner's retrieval, recorded after its answer went out);
        never for a stage's outputs, whose offsets are committed only after `publish` returned. A message
        the broker does not take is passed to `on_error` (on the producer's I/O thread)."""
        self._renew_if_stopped(self._producer)  # an earlier message refused stopped it: not on its I/O thread
        producer = self._producer
        for message in messages:
            headers = dict(message.headers)
            if "traceparent" not in headers:
                headers = inject_trace_headers(headers)
            try:
                future = producer.send(
                    message.topic, value=message.value, key=message.key, headers=list(headers.items())
                )
            except KafkaError as exc:
                on_error(publish_failure([exc]))
                continue
            future.add_errback(on_error)

    def close(self, timeout_s: float = PRODUCER_CLOSE_TIMEOUT_S) -> None:
        """At most `timeout_s` for what is still queued: kafka-python's own close waits without end, and a
        stage stopped during a long broker outage hung until killed. What is dropped was never
        acknowledged, so its input was not committed and is read again."""
        with self._renewing:  # not while another thread replaces it: the new one would be left open
            self._closed = True
            _close_producer(self._producer, timeout_s)


def _close_producer(producer: KafkaProducer, timeout_s: float) -> None:
    try:
        producer.close(timeout=timeout_s)
    except KafkaTimeoutError:
        # kafka-python's close raises when its flush times out, before it stops its sender thread.
        sender = getattr(producer, "_sender", None)
        if sender is not None:
            sender.force_close()
        log.warning("producer closed with records not acknowledged: their senders are told, or their input read again")


def describe_error(exc: BaseException) -> str:
    """An error's text when it is known to be PHI-free, otherwise only its type."""
    if isinstance(exc, PhiSafeError):
        return f"{type(exc).__name__}: {exc}"[:1000]
    return f"{type(exc).__name__} (message withheld: may contain PHI)"


# What dead_letter_for adds to a message's own headers; a replay takes them off again.
DEAD_LETTER_HEADERS = frozenset(
    {
        "imx-error",
        "imx-error-type",
        "imx-failure",
        "imx-stage",
        "imx-source-topic",
        "imx-source-partition",
        "imx-source-offset",
        "imx-value-dropped",
    }
)


# Room for the headers a dead letter adds: an original within this much of the limit would not fit with
# them, and a dead letter the broker refuses (MessageSizeTooLargeError) was retried for ever, its
# partition held (a partner can write a receipt that size to its own topic).
DEAD_LETTER_HEADROOM = 64 * 1024
VALUE_DROPPED_HEADER = "imx-value-dropped"  # one of DEAD_LETTER_HEADERS


def _size(key: bytes | None, value: bytes, headers: Mapping[str, bytes]) -> int:
    return len(key or b"") + len(value) + sum(len(k) + len(v) for k, v in headers.items())


def dead_letter_for(message: IncomingMessage, exc: BaseException, topic: str, stage: str) -> OutgoingMessage:
    """The original message, untouched, with headers saying where it came from and why it failed. One
    too large to carry them drops its value, and then, if its key and headers are what is large (a
    partner writes its receipts' too), those as well, or those alone when the value fits:
    `imx-value-dropped` says how many bytes of value it had (and `+key+headers` when they went too), or
    `key+headers` when only they went."""
    headers, key, value = dict(message.headers), message.key, message.value
    limit = MAX_MESSAGE_BYTES - DEAD_LETTER_HEADROOM
    if _size(key, value, headers) > limit:
        if len(value) <= limit and _size(key, b"", headers) > DEAD_LETTER_HEADROOM:
            # The key and headers are what is large: the value, the event, is kept.
            headers, key = {VALUE_DROPPED_HEADER: b"key+headers"}, None
        else:
            dropped = str(len(value))
            value = b""
            if _size(key, value, headers) > limit:
                headers, key, dropped = {}, None, dropped + "+key+headers"
            headers[VALUE_DROPPED_HEADER] = dropped.encode()
    headers.update(
        {
            "imx-error": describe_error(exc).encode(),
            "imx-error-type": type(exc).__name__.encode(),
            "imx-failure": classify(exc).value.encode(),
            "imx-stage": stage.encode(),
            "imx-source-topic": message.topic.encode(),
            "imx-source-partition": str(message.partition).encode(),
            "imx-source-offset": str(message.offset).encode(),
        }
    )
    return OutgoingMessage(topic=topic, value=value, key=key, headers=headers)


def incoming_message(record: Any) -> IncomingMessage:
    """A consumed record as the stages read it."""
    return IncomingMessage(
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        key=record.key,
        # A tombstone (no value: a partner may write one to its receipts topic) is an empty event; its
        # dead letter, with neither key nor value, was refused by the producer and the stage exited.
        value=record.value if record.value is not None else b"",
        headers={k: (v or b"") for k, v in (record.headers or [])},
        timestamp_ms=record.timestamp,
    )


@dataclass
class BatchResult:
    outputs: list[OutgoingMessage] = field(default_factory=list)
    sources: list[int] = field(default_factory=list)  # per output, the index of the record that made it
    commits: dict[TopicPartition, int] = field(default_factory=dict)  # next offset to read
    retry_from: dict[TopicPartition, int] = field(default_factory=dict)
    processed: int = 0
    failed: int = 0


def run_handler_over_batch(
    records: Sequence[IncomingMessage], handler: Handler, dead_letter_topic: str, stage: str
) -> BatchResult:
    """Pure core of the consumer loop (unit-tested without Kafka).

    Records of one partition are handled in order. A transient error (failures.classify: broker,
    database, disk) stops that partition at the failing record (it is read again after a seek); any
    other error escaping the handler sends the record to the dead-letter topic and processing goes on.
    Handlers quarantine the input problems they can name themselves.
    """
    result = BatchResult()
    provider = trace.get_tracer_provider()
    tracer = provider.get_tracer("imx.bus")
    name = f"{stage} process"
    for index, record in enumerate(records):
        tp = TopicPartition(record.topic, record.partition)
        if tp in result.retry_from:
            continue
        # A span started and attached rather than start_as_current_span: the same span, made current for
        # the handler, without two context managers per record. A span that is not recorded (no exporter,
        # trace not sampled upstream) is only a context; its attributes would be dropped, so they are not
        # built.
        span, span_context = start_consumer_span(provider, tracer, name, record.headers)
        token = otel_context.attach(span_context)
        try:
            recording = span.is_recording()
            if recording:
                span.set_attribute("messaging.destination.name", record.topic)
                span.set_attribute("messaging.kafka.offset", record.offset)
            try:
                outputs = list(handler(record))
            except Exception as exc:
                if is_transient(exc):
                    log.warning(
                        "transient failure; the record will be read again",
                        extra={
                            "stage": stage,
                            "topic": record.topic,
                            "partition": record.partition,
                            "offset": record.offset,
                            "error": type(exc).__name__,
                        },
                    )
                    result.retry_from[tp] = record.offset
                    continue
                # Every other failure is a poison message for this input.
                if recording:
                    span.set_status(trace.Status(trace.StatusCode.ERROR, type(exc).__name__))
                log.warning(
                    "message sent to dead letter",
                    extra={
                        "topic": record.topic,
                        "partition": record.partition,
                        "offset": record.offset,
                        "error": describe_error(exc),
                    },
                )
                outputs = [dead_letter_for(record, exc, dead_letter_topic, stage)]
                result.failed += 1
            else:
                result.processed += 1
            if outputs:
                # Every output of the record carries this span's context: formatted once.
                headers = trace_headers(span_context)
                result.outputs.extend(
                    OutgoingMessage(o.topic, o.value, o.key, with_trace_headers(o.headers, headers)) for o in outputs
                )
                result.sources.extend([index] * len(outputs))
        finally:
            otel_context.detach(token)
            span.end()
        result.commits[tp] = record.offset + 1
    return result


def refresh_metadata(consumer: KafkaConsumer, timeout_ms: int) -> None:
    """Ask the cluster for metadata over the connections `consumer` already holds (reconnecting only to a
    broker that dropped), and wait for the answer; raises KafkaTimeoutError when none comes in time.

    kafka-python 3 has no public call for this: `topics()` waits without a timeout, and
    `bootstrap(refresh=True)` opens, authenticates and closes a connection of its own each time. So this
    does what `KafkaConsumer.topics()` does, with a timeout (tests/integration/test_bus_connections.py
    holds it to that against a real broker)."""
    future = consumer._cluster.request_update()
    consumer._net.run(consumer._manager.wait_for, future, timeout_ms)


class HealthReporter(Protocol):
    """Where a stage says whether it can work (ControlServer: grpc.health.v1)."""

    def mark_serving(self) -> None: ...

    def mark_not_serving(self) -> None: ...


class Readiness:
    """The stage's health from its reasons not to work (the broker away, a partition stuck behind one
    record): SERVING only while none holds; said to `health` only when that changes."""

    def __init__(self, health: HealthReporter | None) -> None:
        self._health = health
        self._reasons: set[str] = set()

    def set(self, reason: str, holds: bool) -> None:
        before = bool(self._reasons)
        if holds:
            self._reasons.add(reason)
        else:
            self._reasons.discard(reason)
        if self._health is not None and bool(self._reasons) != before:
            if self._reasons:
                self._health.mark_not_serving()
            else:
                self._health.mark_serving()


class BrokerOutage:
    """Says once when the broker went away and once when it is back: in the log (the error's type,
    never its text) and on the health service."""

    def __init__(self, stage: str, readiness: Readiness) -> None:
        self._stage = stage
        self._readiness = readiness
        self.active = False

    def began(self, state: RetryCallState) -> None:
        """tenacity's before_sleep: the cycle failed with a broker error and is tried again."""
        if self.active:
            return
        self.active = True
        error = state.outcome.exception() if state.outcome is not None else None
        log.warning(
            "broker unreachable; retrying with backoff, nothing committed",
            extra={"stage": self._stage, "error": type(error).__name__},
        )
        self._readiness.set("broker", True)

    def ended(self) -> None:
        if not self.active:
            return
        self.active = False
        log.info("broker reachable again; resuming", extra={"stage": self._stage})
        self._readiness.set("broker", False)


def flush_handler(handler: Handler) -> None:
    """A handler may hold its effects back to perform them once per batch (audit inserts a batch of
    records in one write): its optional `flush()` runs after the batch, before outputs are published and
    offsets committed. If it raises, nothing of the batch is committed (TransientError: read it again)."""
    flush = getattr(handler, "flush", None)
    if callable(flush):
        flush()


class PipelinedFlush(Protocol):
    """A batched handler whose batch writes can overlap the reading and handling of the next batch.

    `flush_begin` hands what the batch produced to the handler's writer and returns at once;
    `flush_wait` returns when the batch begun last is written, or raises its error; `discard` forgets
    what was handled since the last `flush_begin` (the bus reads it again). The bus begins a batch's
    write only after the one before it is written, so writes keep their order."""

    def flush_begin(self) -> None: ...

    def flush_wait(self) -> None: ...

    def discard(self) -> None: ...


def pipelined(handler: Handler) -> PipelinedFlush | None:
    parts = ("flush_begin", "flush_wait", "discard")
    return handler if all(callable(getattr(handler, p, None)) for p in parts) else None  # type: ignore[return-value]


def batch_starts(records: Iterable[IncomingMessage]) -> dict[TopicPartition, int]:
    """The lowest offset of each partition among `records` (one batch or two): where to read them again from."""
    starts: dict[TopicPartition, int] = {}
    for record in records:
        tp = TopicPartition(record.topic, record.partition)
        if record.offset < starts.get(tp, record.offset + 1):
            starts[tp] = record.offset
    return starts


@dataclass
class InFlightBatch:
    """A handled batch whose write is still running: its outputs are published and its offsets owed
    only once the write is done."""

    handler: PipelinedFlush
    records: Sequence[IncomingMessage]
    result: BatchResult


# A fetch waits at the broker until this much has arrived or the wait is over (see StageConsumer).
FETCH_MIN_BYTES = 64 * 1024
FETCH_MAX_WAIT_MS = 100
# An idle stage's fetch (its last poll found nothing) is answered as soon as anything arrives, or after this
# long: an idle stage at 100 ms asked the broker 10 times a second for nothing. Three idle stages made 29 of
# the broker's 32 requests a second, ~37 ms of its CPU a second (the broker's request log, `make bench`'s
# stack idle after the run).
IDLE_FETCH_MAX_WAIT_MS = 500
# A busy stage commits at most this often instead of after every batch (~10 a second per stage at the
# bench's rate, each a blocking round trip and a write to __consumer_offsets); an idle poll, a stop and
# close() commit what is owed at once. A crash re-reads at most this much more; handlers are idempotent.
# Once a second, the four stages sent 3.4 commits a second in `make bench` (the broker's request log at
# 21 instances/s: 0.16 per instance, more than their heartbeats and metadata requests together); every
# five seconds, 1.7 a second, most of them audit's and delivery's after a poll that found nothing.
COMMIT_INTERVAL_S = 5.0
# How stale a consumer's view of its topics may get: partitions added to a listed topic are read within
# this. A pattern consumer's view is every topic on the broker, refreshed as a whole, so the services
# give theirs a longer age (ServiceSettings.partner_topic_discovery_s).
METADATA_MAX_AGE_MS = 5000
CLOSE_COMMIT_TIMEOUT_MS = 5000


# How much longer than the broker may hold a fetch a poll waits for its answer.
POLL_MARGIN_MS = 200


def poll_wait_ms(poll_timeout_ms: int, fetch_max_wait_ms: int) -> int:
    """A poll outlasts the fetch it waits for. Audit's fetch waits up to a second for company while its
    poll gave up after 0.5 s: every other poll came back empty in the middle of a busy run, and an empty
    poll commits at once, so audit committed about twice a second instead of every five."""
    return max(poll_timeout_ms, fetch_max_wait_ms + POLL_MARGIN_MS)


class StageConsumer:
    """The I/O shell of a stage: poll a bounded batch, run the handler, publish, repeat; commit what was
    published at most every `commit_interval_s`, and whenever a poll finds nothing new. While records
    come, each fetch gathers them for up to `fetch_max_wait_ms`; once a poll finds none, the broker
    answers the next fetch at the first record and otherwise holds it `idle_fetch_max_wait_ms`."""

    def __init__(
        self,
        *,
        bootstrap: str,
        group_id: str,
        topics: Sequence[str] = (),
        pattern: str | None = None,
        producer: BusProducer,
        dead_letter_topic: str,
        stage: str,
        stats: StageStats,
        max_batch: int = 200,
        poll_timeout_ms: int = 500,
        retry_backoff_s: float = 1.0,
        max_backoff_s: float = BROKER_RETRY_MAX_S,  # a cycle that met a dead broker: tried after 1, 2, 2... s
        probe_interval_s: float = 5.0,
        publish_timeout_s: float = 60.0,
        session_timeout_ms: int = 10_000,
        max_poll_interval_ms: int = 300_000,
        commit_interval_s: float = COMMIT_INTERVAL_S,
        group_instance_id: str | None = None,
        metadata_max_age_ms: int = METADATA_MAX_AGE_MS,
        fetch_min_bytes: int = FETCH_MIN_BYTES,
        fetch_max_wait_ms: int = FETCH_MAX_WAIT_MS,
        idle_fetch_max_wait_ms: int = IDLE_FETCH_MAX_WAIT_MS,
        lane_of: Callable[[str], str | None] | None = None,
        client_config: Mapping[str, str] | None = None,
        stuck_after_s: float = STUCK_AFTER_S,
    ) -> None:
        self._consumer = KafkaConsumer(
            **(client_config or {}),
            bootstrap_servers=bootstrap,
            group_id=group_id,
            client_id=f"{stage}-{group_id}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=max_batch,
            # Both limits are soft for the first record batch (KIP-74), so a message of up to
            # MAX_MESSAGE_BYTES is always returned; keeping a response at that size keeps its buffers in
            # the heap rather than in fresh mmap'd pages (see MALLOC_ENV in tools/services_stack.py).
            max_partition_fetch_bytes=MAX_MESSAGE_BYTES,
            fetch_max_bytes=MAX_MESSAGE_BYTES,
            # The broker holds a fetch until this much has arrived or the wait is over: a stage that keeps
            # up then handles (and publishes, and commits) several events per cycle instead of one, for
            # at most `fetch_max_wait_ms` more latency per hop.
            fetch_min_bytes=fetch_min_bytes,
            fetch_max_wait_ms=fetch_max_wait_ms,
            metadata_max_age_ms=metadata_max_age_ms,
            # kafka-python's default is 45 s: a crashed replica's partitions would stall that long.
            session_timeout_ms=session_timeout_ms,
            heartbeat_interval_ms=max(1000, session_timeout_ms // 3),
            # A batch that takes longer than this costs the member its partitions (the batch is read again).
            max_poll_interval_ms=max_poll_interval_ms,
            # Static membership (services/common/static_membership.py): a replica SIGKILLed and started
            # again under the same id gets its partitions back at once.
            group_instance_id=group_instance_id,
            **LONG_LIVED_CLIENT,
        )
        if pattern:
            self._consumer.subscribe(pattern=pattern)
        else:
            self._consumer.subscribe(list(topics))
            # A pattern's consumer fetches every topic's metadata before it joins; a list's may not.
            await_topic_metadata(self._consumer, topics)
        self._producer = producer
        self._dead_letter_topic = dead_letter_topic
        self._stage = stage
        self._stats = stats
        self._poll_timeout_ms = poll_wait_ms(poll_timeout_ms, fetch_max_wait_ms)
        self._max_batch = max_batch
        self._retry_backoff_s = retry_backoff_s
        self._max_backoff_s = max_backoff_s
        self._probe_interval_s = probe_interval_s
        self._publish_timeout_s = publish_timeout_s
        self._next_probe_at = time.monotonic() + probe_interval_s
        self._last_lag_at = 0.0
        self._positions = ConsumerPositions(self._consumer)
        # Priority lanes (services/common/lanes.py): topics `lane_of` names are read most urgent first.
        self._lanes = LaneGate(self._positions, lane_of or (lambda _topic: None))
        self._commit_interval_s = commit_interval_s
        self._owed: dict[TopicPartition, int] = {}  # acknowledged outputs, offsets not committed yet
        self._committed_at = time.monotonic()
        self._busy = False
        # (min bytes, max wait) of the fetches while records come, and while none do. A stage that waits
        # longer for company when busy (audit) than an idle one would keeps its own fetch always.
        self._busy_fetch = (fetch_min_bytes, fetch_max_wait_ms)
        self._idle_fetch = (1, idle_fetch_max_wait_ms) if idle_fetch_max_wait_ms > fetch_max_wait_ms else None
        self._idle = False
        self._in_flight: InFlightBatch | None = None
        self._stuck = StuckPartitions(stuck_after_s)
        self._failing = FailingBatches(stuck_after_s)
        self._readiness = Readiness(None)

    def poll_once(self, handler: Handler) -> int:
        """One cycle; returns how many records were read."""
        self._lanes.apply(paused=self._stats.paused, busy=self._busy)
        try:
            polled = self._consumer.poll(timeout_ms=self._poll_timeout_ms)
        except FencedInstanceIdError:  # a join or sync answered so: see static_membership
            raise name_taken(self._consumer) from None
        # Only a full batch can leave fetched records undrained in the client, whose end offsets are then
        # stale (lanes.py): a poll that returned fewer drained them all, and the next poll fetches every
        # lane anyway. Counting any records as busy asked the broker for the higher lanes' end offsets
        # every 0.2 s while a stage kept up with its input: 0.18 ListOffsets requests per instance in
        # `make bench` (600 instances, the broker's request log), a tenth of all requests.
        self._busy = sum(len(batch) for batch in polled.values()) >= self._max_batch
        self._fetch_mode(idle=not polled)
        records = [incoming_message(r) for batch in polled.values() for r in batch]
        overlapping = pipelined(handler)
        if records:
            try:
                result = run_handler_over_batch(records, handler, self._dead_letter_topic, self._stage)
                if overlapping is not None:
                    # The batch before this one was being written while this one was read and handled.
                    self._settle()
                    overlapping.flush_begin()
                    self._in_flight = InFlightBatch(overlapping, records, result)
                else:
                    flush_handler(handler)
                    self._publish_outputs(records, result)
            except BaseException:
                self._read_again(records, overlapping)
                raise
            if overlapping is None:
                self._owe(result)
            assigned = self._consumer.assignment()
            for tp, offset in result.retry_from.items():
                if tp in assigned:  # a revoked partition is read again from its committed offset by its new owner
                    self._consumer.seek(tp, offset)
            self._note_stuck(result.retry_from, result.commits, assigned)
            if result.retry_from:
                time.sleep(self._retry_backoff_s)
        elif self._stuck.holding:  # an idle poll: a stuck partition may have gone to another replica
            self._note_stuck({}, (), self._consumer.assignment())
        if not self._busy:
            # Overlap only pays while a backlog keeps batches full; a stage that keeps up writes each batch
            # before its next poll, which may wait for input.
            try:
                self._settle()
            except BaseException:
                self._read_again((), overlapping)
                raise
        if not records or time.monotonic() - self._committed_at >= self._commit_interval_s:
            self.commit_owed()
        self._update_lag()
        return len(records)

    def _note_stuck(
        self,
        retried: Mapping[TopicPartition, int],
        moved: Iterable[TopicPartition],
        assigned: Collection[TopicPartition],
    ) -> None:
        """Says once when one record has held its partition for `stuck_after_s` (the stage is not ready
        until it gets through, or the partition is another replica's), and once when it has
        (stuck_partitions.py)."""
        newly, freed = self._stuck.saw(retried, moved, assigned)
        for held in newly:
            log.error(
                "the same record has failed for minutes and holds its partition (an outage not over, or a record "
                "that cannot get through: its error is logged above); the stage is not ready until it gets through",
                extra={"stage": self._stage, "topic": held.topic, "partition": held.partition,
                       "offset": held.offset, "seconds": round(held.seconds)},
            )  # fmt: skip
        for held in freed:
            log.info(
                "the partition held by one record moves again",
                extra={"stage": self._stage, "topic": held.topic, "partition": held.partition, "offset": held.offset},
            )
        self._readiness.set("stuck", self._stuck.stuck)

    def _batch_failed(self) -> None:
        """A batch's write or publish failed transiently (it is read again): after `stuck_after_s` with no
        batch through (`_owe`; a cycle that only hands a batch to a pipelined write, or reads nothing, is no
        progress) the stage says so once and is not ready, as for one stuck record (FailingBatches)."""
        seconds = self._failing.failed()
        if seconds is not None:
            log.error(
                "every batch has failed for minutes and is read again; the stage is not ready until one gets through",
                extra={"stage": self._stage, "seconds": round(seconds)},
            )
            self._readiness.set("failing", True)

    def _batch_succeeded(self) -> None:
        if self._failing.got_through():
            log.info("batches get through again", extra={"stage": self._stage})
            self._readiness.set("failing", False)

    def _fetch_mode(self, *, idle: bool) -> None:
        """Idle: the broker answers the next fetch at the first record (no wait for company, so the first
        event after a pause goes on at once) and otherwise holds it `idle_fetch_max_wait_ms`. Busy: the
        stage's own batching fetch. kafka-python reads both settings from its fetcher's config each time
        it builds a fetch request (Fetcher._create_fetch_requests, kafka-python 3.0); a fetch already
        sent keeps the settings it was sent with."""
        if self._idle_fetch is None or idle == self._idle:
            return
        self._idle = idle
        config = self._consumer._fetcher.config
        config["fetch_min_bytes"], config["fetch_max_wait_ms"] = self._idle_fetch if idle else self._busy_fetch

    def _owe(self, result: BatchResult) -> None:
        self._owed.update(result.commits)
        self._stats.record(result.processed, result.failed)
        if result.commits:  # a batch got through: its outputs acknowledged, its offsets owed
            self._batch_succeeded()

    def _settle(self) -> None:
        """Wait for the write of the batch in flight (a pipelined handler's), publish its outputs and owe
        its offsets. Raises the write's (or the publish's) error; the batch is then still in flight."""
        in_flight = self._in_flight
        if in_flight is None:
            return
        in_flight.handler.flush_wait()
        self._publish_outputs(in_flight.records, in_flight.result)
        self._in_flight = None
        self._owe(in_flight.result)

    def _publish_outputs(self, records: Sequence[IncomingMessage], result: BatchResult) -> None:
        """Publish a batch's outputs. When the broker refuses one for what it is (publish_refusals.py),
        each record's outputs are published on their own, and a record whose outputs are refused goes to
        the dead-letter topic instead, so its partition moves on. Outputs acknowledged before the refusal
        may go twice: the stages after this one keep what they get by its deterministic id."""
        refused = publish_apart(
            partial(self._producer.publish, timeout_s=self._publish_timeout_s),
            result.outputs,
            result.sources,
            RecordRefused,
        )
        if refused:
            # All at once, after every other input's outputs got through: a batch read again (another
            # input's publish failing otherwise) does not leave a dead letter of each earlier try.
            self._dead_letter_refused([(records[index], error) for index, error in refused.items()])
            result.processed, result.failed = max(0, result.processed - len(refused)), result.failed + len(refused)

    def _dead_letter_refused(self, refused: Sequence[tuple[IncomingMessage, RecordRefused]]) -> None:
        for record, error in refused:
            log.error(
                "the broker refused an output of this record; the record is sent to the dead-letter topic",
                extra={"stage": self._stage, "topic": record.topic, "partition": record.partition,
                       "offset": record.offset, "error": describe_error(error)},
            )  # fmt: skip
        letters = [dead_letter_for(record, error, self._dead_letter_topic, self._stage) for record, error in refused]
        try:
            self._producer.publish(letters, timeout_s=self._publish_timeout_s)
        except RecordRefused as exc:  # the dead-letter topic takes less than the default: read it again
            raise TransientError(f"dead letter refused: {exc}") from exc

    def _read_again(self, records: Sequence[IncomingMessage], overlapping: PipelinedFlush | None) -> None:
        """A cycle failed: nothing of this batch, nor of the batch still in flight, is committed; both are
        read again from their first records, and what the handler holds of them is forgotten."""
        in_flight, self._in_flight = self._in_flight, None
        earlier: Sequence[IncomingMessage] = ()
        if in_flight is not None:
            earlier = in_flight.records
            # Its write may still be running: let it end before the records come again, whatever it did.
            with contextlib.suppress(Exception):
                in_flight.handler.flush_wait()
        if overlapping is not None:
            overlapping.discard()
        self._seek_to_batch_start([*earlier, *records])

    def _seek_to_batch_start(self, records: Sequence[IncomingMessage]) -> None:
        """Nothing of a batch whose outputs were not all acknowledged is committed, and the consumer reads it
        again from its first record. Seeking is local: it works while the broker is away."""
        starts = batch_starts(records)
        assigned = self._consumer.assignment()
        for tp, offset in starts.items():
            if tp in assigned:  # a revoked partition is read again from its committed offset by its new owner
                self._consumer.seek(tp, offset)

    def _probe_broker(self, timeout_ms: int = 2000, *, outage: bool = False) -> None:
        """An idle consumer's poll returns nothing, without an error, while the broker is down; ask for
        cluster metadata now and then (and on every retry of an outage) so that health says so.
        Raises KafkaTimeoutError when no broker answers in time.

        While the broker answers, the question goes over the consumer's own connections: a fresh bootstrap
        per probe opened (and SASL-authenticated) a new connection every `probe_interval_s` in every stage.
        Only during an outage, when those connections are gone anyway, does the probe bootstrap afresh."""
        now = time.monotonic()
        if now < self._next_probe_at:
            return
        self._next_probe_at = now + self._probe_interval_s
        if outage:
            self._consumer.bootstrap(timeout_ms=timeout_ms, refresh=True)
        else:
            refresh_metadata(self._consumer, timeout_ms)

    def commit_owed(self, timeout_ms: int | None = None) -> None:
        """Commit the offsets of every batch handled since the last commit (all of their outputs are
        acknowledged). Offsets of partitions no longer assigned are dropped: their new owner reads those
        records again, and the handlers are idempotent.

        A commit can fail when the group rebalances under the batch (a replica joins, a new partner topic
        matches the audit pattern). The batch's outputs are already acknowledged, so nothing is lost: the
        uncommitted records are read again by whoever owns their partitions next, and the handlers are
        idempotent. Crashing the stage instead would stop it for good."""
        self._committed_at = time.monotonic()
        if not self._owed:
            return
        assigned = self._consumer.assignment()
        offsets = {tp: OffsetAndMetadata(offset, "", -1) for tp, offset in self._owed.items() if tp in assigned}
        self._owed.clear()
        if not offsets:
            return
        try:
            self._consumer.commit(offsets, timeout_ms=timeout_ms)
        except FencedInstanceIdError:
            # No rebalance will end this: another process holds this replica's name (static_membership).
            self._stats.record_commit_failure()
            raise name_taken(self._consumer) from None
        except KafkaError as error:
            self._stats.record_commit_failure()
            log.warning(
                "offset commit failed; the batch will be read again after the rebalance",
                extra={"stage": self._stage, "error": type(error).__name__},
            )

    def _update_lag(self) -> None:
        now = time.monotonic()
        if now - self._last_lag_at < 2.0:
            return
        self._last_lag_at = now
        self._stats.set_lag(self._positions.lag())

    def run(self, handler: Handler, stop: threading.Event, health: HealthReporter | None = None) -> None:
        """Until `stop` is set; the batch in flight finishes and everything handled is committed before
        returning.

        A broker error ends no process: the cycle is tried again after 1, then every 2 seconds (`max_backoff_s`), with
        `health` NOT_SERVING until a cycle, and a metadata probe, succeed again; NOT_SERVING too while one
        record has held its partition for `stuck_after_s` (stuck_partitions.py)."""
        self._readiness = Readiness(health)
        outage = BrokerOutage(self._stage, self._readiness)
        retrying = Retrying(
            retry=retry_if_exception(broker_unreachable),
            wait=wait_exponential(multiplier=self._retry_backoff_s, max=self._max_backoff_s),
            stop=stop_when_event_set(stop),
            sleep=stop.wait,  # type: ignore[arg-type]  # returns a bool tenacity ignores; a stop ends the wait
            before_sleep=outage.began,
            reraise=True,
        )
        while not stop.is_set():
            try:
                retrying(self._cycle, handler, outage)
            except TransientError as error:
                if broker_unreachable(error):  # tenacity gave up because the stage is stopping
                    continue
                log.warning(
                    "transient failure; batch will be read again",
                    extra={"stage": self._stage, "error": describe_error(error)},
                )
                self._batch_failed()
                stop.wait(self._retry_backoff_s)
            except KafkaError as error:
                if not (stop.is_set() and broker_unreachable(error)):
                    raise
            except Exception as error:  # a batch's flush or publish met a database or disk outage
                if not is_transient(error):
                    raise
                log.warning(
                    "transient failure; batch will be read again",
                    extra={"stage": self._stage, "error": type(error).__name__},
                )
                self._batch_failed()
                stop.wait(self._retry_backoff_s)
            else:
                outage.ended()
        self._settle_before_closing()
        self.commit_owed(timeout_ms=CLOSE_COMMIT_TIMEOUT_MS)

    def _settle_before_closing(self) -> None:
        """The batch in flight is committed with the rest if its write succeeds; otherwise it is read again."""
        try:
            self._settle()
        except Exception as error:  # not committed: read again at the next start
            self._in_flight = None
            log.warning(
                "the last batch's write failed while stopping; it will be read again",
                extra={"stage": self._stage, "error": type(error).__name__},
            )

    def _cycle(self, handler: Handler, outage: BrokerOutage) -> None:
        if outage.active:
            self._next_probe_at = 0.0  # during an outage, only a broker that answers ends it
        self.poll_once(handler)
        self._probe_broker(outage=outage.active)

    def subscribed_topics(self) -> set[str]:
        """The topics the consumer reads: those its pattern matched at its last look, or its list."""
        return self._consumer.subscription() or set()

    def look_for_new_topics(self) -> None:
        """Refresh the view of the broker's topics now, not at the next scheduled look: a pattern then
        takes up a topic this process has just created. Any thread may call it."""
        # kafka-python has no public call for this; its metadata listeners (the pattern's among them)
        # run as after any refresh.
        self._consumer._cluster.request_update()

    def close(self) -> None:
        """What was handled and acknowledged is committed first (a broker that does not answer within
        `CLOSE_COMMIT_TIMEOUT_MS` leaves it to be read again)."""
        self._settle_before_closing()
        with contextlib.suppress(ReplicaNameTaken):  # said as it was found; nothing more to do for it
            self.commit_owed(timeout_ms=CLOSE_COMMIT_TIMEOUT_MS)
        leave_group(self._consumer)  # a static member too: see the module
        self._consumer.close(autocommit=False)
