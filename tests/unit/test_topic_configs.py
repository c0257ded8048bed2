"""A created topic's settings follow its replication factor (services/common/bus.py `topic_configs`)."""

from __future__ import annotations

from services.common.bus import MAX_MESSAGE_BYTES, topic_configs


def test_one_copy_leaves_min_insync_to_the_broker() -> None:
    assert topic_configs(1) == {"max.message.bytes": str(MAX_MESSAGE_BYTES)}


def test_replicated_topics_acknowledge_when_all_but_one_copy_have_the_event() -> None:
    assert topic_configs(3)["min.insync.replicas"] == "2"
    assert topic_configs(2)["min.insync.replicas"] == "1"


def test_a_kept_topic_keeps_its_records_until_they_are_deleted() -> None:
    assert topic_configs(1, kept=True)["retention.ms"] == "-1"
    assert "retention.ms" not in topic_configs(3)  # the broker's own retention
