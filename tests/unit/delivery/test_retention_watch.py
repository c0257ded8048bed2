"""When a partner's unread backlog is reported against its feed's retention, and what expired unread."""

from __future__ import annotations

import pytest

from services.common.messages import OutgoingMessage
from services.common.topics import Topics
from services.delivery.delivered import DeliveredInstance
from services.delivery.retention_watch import PartitionBacklog, PartnerLag, backlog, expired_outcome, warning_level
from services.proto_gen.imx.v1 import events_pb2

DAY_MS = 24 * 3600 * 1000


def test_a_partition_read_up_to_its_end_has_no_backlog() -> None:
    assert backlog(committed=10, log_start=0, log_end=10, first_unread_timestamp=None) == (0, 0, None)


def test_unread_messages_and_those_retention_deleted_before_they_were_read() -> None:
    assert backlog(committed=4, log_start=0, log_end=10, first_unread_timestamp=123) == (6, 0, 123)
    assert backlog(committed=4, log_start=7, log_end=10, first_unread_timestamp=456) == (3, 3, 456)


def test_a_partner_that_never_read_has_everything_unread_and_nothing_known_lost() -> None:
    assert backlog(committed=None, log_start=5, log_end=9, first_unread_timestamp=1) == (4, 0, 1)


def test_warnings_at_the_configured_fractions_of_the_retention() -> None:
    lag = PartnerLag("lab", retention_ms=7 * DAY_MS, partitions=[PartitionBacklog("t", 0, 5, 0, 0)])
    assert lag.fraction(now=int(3.5 * DAY_MS)) == 0.5
    assert warning_level(lag.fraction(int(3 * DAY_MS))) is None
    assert warning_level(lag.fraction(int(4 * DAY_MS))) == 0.5
    assert warning_level(lag.fraction(int(6 * DAY_MS))) == 0.8
    assert warning_level(0.95, fractions=(0.9, 0.5)) == 0.9


def test_an_expired_delivery_is_a_failed_outcome_with_a_stable_id() -> None:
    item = DeliveredInstance(
        partner_id="lab",
        study_uid="2.25.1",
        series_uid="2.25.2",
        sop_uid="2.25.3",
        sop_class_uid="",
        transfer_syntax_uid="",
        sha256="a" * 64,
        size=1,
        delivery_id="d1",
        source_study_uid="1.2.3",
        source_sop_uid="1.2.3.4",
        source_org="trust-a",
        route_id="research",
    )
    first = expired_outcome(item, Topics(), clock=lambda: 1)
    again = expired_outcome(item, Topics(), clock=lambda: 2)
    outcome = events_pb2.DeliveryOutcome.FromString(first.value)
    assert first.topic == "imx.outcomes.v1" and first.key == b"1.2.3"
    assert (outcome.status, outcome.detail, outcome.partner_id, outcome.route_id) == (
        events_pb2.DELIVERY_STATUS_FAILED,
        "expired-unread",
        "lab",
        "research",
    )
    assert outcome.meta.event_id == events_pb2.DeliveryOutcome.FromString(again.value).meta.event_id


def test_the_last_check_is_exported_as_gauges_per_partner() -> None:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from services.delivery.retention_watch import RetentionWatch

    reader = InMemoryMetricReader()
    lag = PartnerLag("lab", retention_ms=10 * DAY_MS, partitions=[PartitionBacklog("t", 0, 7, 0, 2)])
    watch = RetentionWatch(
        partners=lambda: ["lab"],
        feed_topics=lambda p: [],
        read_lag=lambda p, topics: lag,
        unstored=lambda: [],
        mark_expired=lambda items, at: None,
        publish=lambda messages: None,
        topics=Topics(),
        clock=lambda: 8 * DAY_MS,
        meter=MeterProvider(metric_readers=[reader]).get_meter("test"),
    )
    watch.check()
    data = reader.get_metrics_data()
    assert data is not None
    values = {
        metric.name: {point.attributes["partner"]: point.value for point in metric.data.data_points}
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
    }
    assert values == {
        "imx.partner.retention_used": {"lab": 0.8},
        "imx.partner.unread": {"lab": 7},
        "imx.partner.expired_unread": {"lab": 2},
    }


def test_a_security_alert_once_per_upward_crossing_of_a_warning_fraction() -> None:
    from services.delivery.retention_watch import RetentionWatch

    retention = 10 * DAY_MS
    lag = PartnerLag("lab", retention_ms=retention, partitions=[PartitionBacklog("t", 0, 7, 0, 0)])
    published: list[OutgoingMessage] = []
    clock = [0]
    watch = RetentionWatch(
        partners=lambda: ["lab"],
        feed_topics=lambda p: [],
        read_lag=lambda p, topics: lag,
        unstored=lambda: [],
        mark_expired=lambda items, at: None,
        publish=published.extend,
        topics=Topics("x."),
        clock=lambda: clock[0],
    )
    raised = []
    for days in (2, 6, 7, 9, 9.5, 3, 6, 9):  # 20%, 60%, 70%, 90%, 95%, back to 30%, 60%, 90%
        clock[0] = int(days * DAY_MS)
        before = len(published)
        watch.check()
        raised.append([events_pb2.SecurityAlert.FromString(m.value).threshold for m in published[before:]])
    assert raised == [[], [0.5], [], [0.8], [], [], [0.5], [0.8]]
    alert = events_pb2.SecurityAlert.FromString(published[1].value)
    assert published[1].topic == "x.imx.alerts.v1" and published[1].key == b"lab"
    assert (alert.kind, alert.service, alert.partner_id, alert.unread, alert.retention_ms) == (
        "partner-backlog-retention",
        "delivery",
        "lab",
        7,
        retention,
    )
    assert alert.retention_used == 0.9 and alert.oldest_unread_age_ms == 9 * DAY_MS
    # The same crossing (partner, threshold, oldest unread message) has one id, whoever raises it.
    assert alert.meta.event_id == events_pb2.SecurityAlert.FromString(published[-1].value).meta.event_id


def test_an_alert_that_could_not_be_published_is_raised_again_at_the_next_check() -> None:
    from services.delivery.retention_watch import RetentionWatch

    lag = PartnerLag("lab", retention_ms=10 * DAY_MS, partitions=[PartitionBacklog("t", 0, 1, 0, 0)])
    attempts: list[int] = []

    def publish(messages: list[OutgoingMessage]) -> None:
        attempts.append(len(messages))
        if len(attempts) == 1:
            raise ConnectionError("broker away")

    watch = RetentionWatch(
        partners=lambda: ["lab"],
        feed_topics=lambda p: [],
        read_lag=lambda p, topics: lag,
        unstored=lambda: [],
        mark_expired=lambda items, at: None,
        publish=publish,
        topics=Topics(),
        clock=lambda: 6 * DAY_MS,
    )
    with pytest.raises(ConnectionError):
        watch.check()
    watch.check()
    watch.check()
    assert attempts == [1, 1], "raised again after the failure, then not again"


def test_a_delivery_sent_again_expires_under_an_id_of_that_send() -> None:
    from dataclasses import replace

    from services.common.events import event_id

    item = DeliveredInstance(
        partner_id="lab", study_uid="2.25.1", series_uid="2.25.2", sop_uid="2.25.3", sop_class_uid="",
        transfer_syntax_uid="", sha256="a" * 64, size=1, delivery_id="d1", ingested_at_ms=5,
    )  # fmt: skip
    resent = replace(item, resent=True, ingested_at_ms=9)

    def outcome_id(of: DeliveredInstance) -> str:
        return events_pb2.DeliveryOutcome.FromString(expired_outcome(of, Topics(), clock=lambda: 1).value).meta.event_id

    assert outcome_id(item) == event_id("expired-unread", "d1"), "a first send keeps the id earlier releases gave"
    assert outcome_id(resent) not in (outcome_id(item), outcome_id(replace(resent, ingested_at_ms=10)))
    assert outcome_id(resent) == event_id("expired-unread", "d1", "9"), "the same on every replica and replay"
