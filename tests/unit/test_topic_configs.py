"""A created topic's settings follow its replication factor (services/common/bus.py `topic_configs`)."""

from __future__ import annotations

from services.common.bus import MAX_MESSAGE_BYTES, topic_configs
from services.common.settings import retention_ms


def test_one_copy_leaves_min_insync_to_the_broker() -> None:
    assert topic_configs(1) == {"max.message.bytes": str(MAX_MESSAGE_BYTES)}


def test_replicated_topics_acknowledge_when_all_but_one_copy_have_the_event() -> None:
    assert topic_configs(3)["min.insync.replicas"] == "2"
    assert topic_configs(2)["min.insync.replicas"] == "1"


def test_a_topic_given_a_retention_keeps_its_records_that_long() -> None:
    assert topic_configs(1, retention_ms=-1)["retention.ms"] == "-1"  # until deleted
    assert topic_configs(3, retention_ms=86400000)["retention.ms"] == "86400000"
    assert "retention.ms" not in topic_configs(3)  # the broker's own retention


def test_dead_letter_retention_days_become_retention_ms() -> None:
    assert retention_ms(30) == 30 * 24 * 3600 * 1000
    assert retention_ms(0.5) == 12 * 3600 * 1000
    assert retention_ms(0) == -1  # until deleted
    assert retention_ms(1e-12) == 1, "never 0: the broker would delete every letter at once"
