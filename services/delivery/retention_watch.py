"""Retention safety: a partner whose unread backlog approaches its feed's retention is warned about,
and what expired unread is never left looking delivered.

Kafka deletes a partner's feed messages after the topic's retention (seven days by default) whether
or not the partner read them. The watch reads, for each partner, how old its oldest unread message
is (per partition: the message at its gateway group's committed offset; all of it when no group of
the partner has committed) against `retention.ms`, and says so at configurable fractions: log,
metrics, `imx partners lag`, and, once each time a partner crosses a fraction upwards, a
SecurityAlert on `imx.alerts.v1` that audit records as a PS3.15 Security Alert. A delivery its
gateway never reported stored, and older than the retention, can no longer be fetched from the feed:
it gets a failed DeliveryOutcome `expired-unread`, so the audit trail shows it failed, not delivered.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field

from kafka import KafkaConsumer
from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient
from kafka.structs import TopicPartition
from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

from services.common.events import event_id, event_message, now_ms
from services.common.messages import OutgoingMessage
from services.common.service_access import central_gateway_group
from services.common.topics import Topics
from services.delivery.delivered import DeliveredInstance
from services.proto_gen.imx.v1 import events_pb2

log = logging.getLogger(__name__)

DEFAULT_RETENTION_MS = 7 * 24 * 3600 * 1000
WARN_FRACTIONS = (0.5, 0.8)
BACKLOG_ALERT = "partner-backlog-retention"


@dataclass(frozen=True)
class PartitionBacklog:
    topic: str
    partition: int
    unread: int  # messages after the committed offset
    oldest_unread_ms: int | None  # broker timestamp of the first unread message, None when none
    expired: int  # messages deleted by retention before the partner read them
    read: bool = True  # a committed offset here, or nothing deleted yet (else `expired` cannot be known)


@dataclass
class PartnerLag:
    partner_id: str
    retention_ms: int
    partitions: list[PartitionBacklog] = field(default_factory=list)

    @property
    def unread(self) -> int:
        return sum(p.unread for p in self.partitions)

    @property
    def expired(self) -> int:
        return sum(p.expired for p in self.partitions)

    @property
    def loss_unknown(self) -> bool:
        """Some partition has lost messages to retention and has no committed offset (its gateway never
        ran, or its offsets were deleted after `offsets.retention.minutes`): what expired unread there
        cannot be counted."""
        return any(not p.read for p in self.partitions)

    def oldest_unread_age_ms(self, now: int) -> int:
        ages = [now - p.oldest_unread_ms for p in self.partitions if p.oldest_unread_ms is not None and p.unread]
        return max(ages, default=0)

    def oldest_unread_ms(self) -> int | None:
        """Broker timestamp of the oldest unread message on any lane, None when nothing is unread."""
        stamps = [p.oldest_unread_ms for p in self.partitions if p.oldest_unread_ms is not None and p.unread]
        return min(stamps, default=None)

    def fraction(self, now: int) -> float:
        """How much of the retention the oldest unread message has used (1.0: about to expire)."""
        return self.oldest_unread_age_ms(now) / self.retention_ms if self.retention_ms > 0 else 0.0


def warning_level(fraction: float, fractions: Sequence[float] = WARN_FRACTIONS) -> float | None:
    """The highest warning fraction reached, None below the first."""
    reached = [f for f in sorted(fractions) if fraction >= f]
    return reached[-1] if reached else None


def backlog(
    committed: int | None, log_start: int, log_end: int, first_unread_timestamp: int | None
) -> tuple[int, int, int | None]:
    """(unread, expired, oldest unread timestamp) of one partition. Without a committed offset the
    partner has read nothing: everything still in the log is unread, and nothing is counted expired
    (what a partner never subscribed to is not known to be lost)."""
    if committed is None:
        return log_end - log_start, 0, first_unread_timestamp
    expired = max(0, log_start - committed)
    unread = max(0, log_end - max(committed, log_start))
    return unread, expired, first_unread_timestamp if unread else None


def expired_outcome(item: DeliveredInstance, topics: Topics, clock: Callable[[], int]) -> OutgoingMessage:
    """A failed outcome for a delivery that expired from the feed unread (deterministic id). One recorded
    over an earlier send of the instance (`resent`: the same delivery sent again, or one that replaced
    another) gets an id naming its send, as the gateway names its receipt: a delivery sent again whose first
    send expired too would otherwise have the first expiry's id, and audit would keep only that."""
    parts = ["expired-unread", item.delivery_id] + ([str(item.ingested_at_ms)] if item.resent else [])
    outcome = events_pb2.DeliveryOutcome(
        meta=events_pb2.EventMeta(
            event_id=event_id(*parts),
            causation_id=item.delivery_id,
            occurred_at_ms=clock(),
            ingested_at_ms=item.ingested_at_ms,
        ),
        source_instance=events_pb2.InstanceRef(
            study_instance_uid=item.source_study_uid or item.study_uid,
            sop_instance_uid=item.source_sop_uid or item.sop_uid,
        ),
        instance=events_pb2.InstanceRef(
            study_instance_uid=item.study_uid,
            series_instance_uid=item.series_uid,
            sop_instance_uid=item.sop_uid,
        ),
        source_org=item.source_org,
        route_id=item.route_id,
        partner_id=item.partner_id,
        status=events_pb2.DELIVERY_STATUS_FAILED,
        topic=topics.partner(item.partner_id),
        detail="expired-unread",
    )
    return event_message(topics.outcomes, outcome, item.source_study_uid or item.study_uid)


def backlog_alert(lag: PartnerLag, threshold: float, now: int, topics: Topics) -> OutgoingMessage:
    """The SecurityAlert of a partner whose backlog crossed `threshold`. Its id names the partner, the
    threshold and the oldest unread message, so another replica, or this one after a restart, raising
    the same crossing produces the same id (audit keeps one record)."""
    oldest = lag.oldest_unread_ms()
    alert = events_pb2.SecurityAlert(
        meta=events_pb2.EventMeta(
            event_id=event_id(BACKLOG_ALERT, lag.partner_id, f"{threshold:g}", str(oldest)),
            occurred_at_ms=now,
        ),
        kind=BACKLOG_ALERT,
        service="delivery",
        partner_id=lag.partner_id,
        threshold=threshold,
        retention_used=lag.fraction(now),
        unread=lag.unread,
        expired=lag.expired,
        retention_ms=lag.retention_ms,
        oldest_unread_age_ms=lag.oldest_unread_age_ms(now),
    )
    return event_message(topics.alerts, alert, lag.partner_id)


def crossed(previous: float | None, level: float | None) -> bool:
    """Whether a check's warning level is a new upward crossing: above the level of the check before.
    Falling back below a fraction and rising through it again is a new crossing."""
    return level is not None and (previous is None or level > previous)


def _group_id(group: object) -> str:
    """kafka-python 3 lists groups as dicts; older versions as (id, protocol) tuples."""
    if isinstance(group, dict):
        return str(group.get("group_id") or group.get("group") or "")
    if isinstance(group, tuple):
        return str(group[0])
    return str(group)


class KafkaBacklogReader:
    """Reads committed offsets, log bounds, first unread timestamps and retention from the broker
    (the internal listener, where the services may describe every group)."""

    def __init__(self, bootstrap: str, client_config: Mapping[str, str] | None = None, topic_prefix: str = "") -> None:
        self._bootstrap = bootstrap
        self._client_config = dict(client_config or {})
        self._topic_prefix = topic_prefix

    def partner_lag(self, partner_id: str, feed_topics: Iterable[str]) -> PartnerLag:
        admin = KafkaAdminClient(
            bootstrap_servers=self._bootstrap, client_id="imx-retention-watch", **self._client_config
        )
        consumer = KafkaConsumer(
            bootstrap_servers=self._bootstrap,
            group_id=None,
            enable_auto_commit=False,
            consumer_timeout_ms=1000,
            **self._client_config,
        )
        try:
            topics = [t for t in feed_topics if consumer.partitions_for_topic(t)]
            retention = self._retention_ms(admin, topics)
            committed = self._committed(admin, partner_id, central_gateway_group(partner_id, self._topic_prefix))
            lag = PartnerLag(partner_id, retention)
            partitions = [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or [])]
            if not partitions:
                return lag
            starts, ends = consumer.beginning_offsets(partitions), consumer.end_offsets(partitions)
            for tp in partitions:
                position = committed.get(tp)
                first = max(position if position is not None else 0, starts[tp])
                timestamp = self._timestamp_at(consumer, tp, first) if first < ends[tp] else None
                unread, expired, oldest = backlog(position, starts[tp], ends[tp], timestamp)
                lag.partitions.append(
                    # Unknown only where the broker has deleted messages (log start past 0) with no offset to
                    # count them against: lanes and partitions a partner never got anything on commit nothing.
                    PartitionBacklog(
                        tp.topic, tp.partition, unread, oldest, expired, read=position is not None or starts[tp] == 0
                    )
                )
            return lag
        finally:
            consumer.close()
            admin.close()

    @staticmethod
    def _retention_ms(admin: KafkaAdminClient, topics: Sequence[str]) -> int:
        if not topics:
            return DEFAULT_RETENTION_MS
        described = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topics[0])], config_filter="All")
        # kafka-python 3: {resource type: {resource name: {config key: {config data}}}}
        for by_name in described.values():
            for configs in by_name.values():
                entry = configs.get("retention.ms")
                value = entry.get("value") if isinstance(entry, dict) else entry
                with suppress(TypeError, ValueError):
                    return int(value)  # type: ignore[arg-type]
        return DEFAULT_RETENTION_MS

    @staticmethod
    def _committed(admin: KafkaAdminClient, partner_id: str, central_group: str) -> dict[TopicPartition, int]:
        """The slowest committed offset per partition of the partner's groups ("<partner>." prefix) and
        of its central gateway's group."""
        slowest: dict[TopicPartition, int] = {}
        groups = [_group_id(g) for g in admin.list_groups()]
        for group in groups:
            if not (group.startswith(f"{partner_id}.") or group == central_group):
                continue
            for tp, meta in admin.list_group_offsets({group: None}).get(group, {}).items():
                if meta.offset >= 0:
                    slowest[tp] = min(meta.offset, slowest.get(tp, meta.offset))
        return slowest

    @staticmethod
    def _timestamp_at(consumer: KafkaConsumer, tp: TopicPartition, offset: int) -> int | None:
        consumer.assign([tp])
        consumer.seek(tp, offset)
        for records in consumer.poll(timeout_ms=2000, max_records=1).values():
            for record in records:
                return int(record.timestamp)
        return None


class RetentionWatch:
    def __init__(
        self,
        partners: Callable[[], list[str]],
        feed_topics: Callable[[str], list[str]],
        read_lag: Callable[[str, list[str]], PartnerLag],
        unstored: Callable[[], Iterable[DeliveredInstance]],
        mark_expired: Callable[[list[DeliveredInstance], int], None],
        publish: Callable[[list[OutgoingMessage]], None],
        topics: Topics,
        fractions: Sequence[float] = WARN_FRACTIONS,
        clock: Callable[[], int] = now_ms,
        meter: metrics.Meter | None = None,
    ) -> None:
        self._partners = partners
        self._feed_topics = feed_topics
        self._read_lag = read_lag
        self._unstored = unstored
        self._mark_expired = mark_expired
        self._publish = publish
        self._topics = topics
        self._fractions = fractions
        self._clock = clock
        self.latest: dict[str, PartnerLag] = {}
        self._checked_at = 0
        self._levels: dict[str, float] = {}  # partner -> warning level of the last check (crossings)
        meter = meter or metrics.get_meter("imx.delivery.retention")
        # Gauges per partner, from the last check: what operators alert on.
        meter.create_observable_gauge(
            "imx.partner.retention_used",
            callbacks=[self._observe(lambda lag: lag.fraction(self._checked_at))],
            description="oldest unread message's age / the feed's retention (1.0: about to expire)",
        )
        meter.create_observable_gauge(
            "imx.partner.unread", callbacks=[self._observe(lambda lag: lag.unread)], description="unread feed messages"
        )
        meter.create_observable_gauge(
            "imx.partner.expired_unread",
            callbacks=[self._observe(lambda lag: lag.expired)],
            description="feed messages deleted by retention before the partner read them",
        )

    def _observe(self, value: Callable[[PartnerLag], float]) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def callback(_options: CallbackOptions) -> Iterable[Observation]:
            return [Observation(value(lag), {"partner": partner}) for partner, lag in self.latest.items()]

        return callback

    def check(self) -> dict[str, PartnerLag]:
        now = self._clock()
        lags = {p: self._read_lag(p, self._feed_topics(p)) for p in self._partners()}
        levels: dict[str, float] = {}
        alerts: list[OutgoingMessage] = []
        for partner_id, lag in lags.items():
            level = warning_level(lag.fraction(now), self._fractions)
            if level is not None:
                levels[partner_id] = level
                log.warning(
                    "partner backlog approaches the feed's retention",
                    extra={"partner": partner_id, "count": lag.unread, "rate": round(lag.fraction(now), 3)},
                )
            if level is not None and crossed(self._levels.get(partner_id), level):
                alerts.append(backlog_alert(lag, level, now, self._topics))
            if lag.expired:
                log.error("partner feed messages expired unread", extra={"partner": partner_id, "count": lag.expired})
        if alerts:
            self._publish(alerts)  # a failure leaves the levels as they were: the next check raises them again
        self._levels = levels
        self.latest, self._checked_at = lags, now
        self._expire_unread(lags, now)
        return lags

    def _expire_unread(self, lags: dict[str, PartnerLag], now: int) -> None:
        # Past the retention by age, and only while the broker has dropped unread messages of that feed
        # (or, where the partner has no committed offset, cannot tell): Kafka deletes whole segments, so a
        # message can be read for days past `retention.ms`, and one the partner's gateway then stored was
        # reported both expired and stored.
        expired = [
            item
            for item in self._unstored()
            if item.partner_id in lags
            and (lags[item.partner_id].expired or lags[item.partner_id].loss_unknown)
            and item.delivered_at_ms
            and now - item.delivered_at_ms > lags[item.partner_id].retention_ms
        ]
        if not expired:
            return
        self._publish([expired_outcome(item, self._topics, self._clock) for item in expired])
        self._mark_expired(expired, now)
        log.error("deliveries expired from the feed before they were stored", extra={"count": len(expired)})

    def run(self, stop: threading.Event, interval_s: float) -> None:
        while not stop.wait(interval_s):
            try:
                self.check()
            except Exception as error:  # the broker or database is away: next round
                log.warning("retention check failed", extra={"error": type(error).__name__})
