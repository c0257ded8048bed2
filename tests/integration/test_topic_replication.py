"""Topics are created with the replication factor the deployment sets (IMX_TOPIC_REPLICATION_FACTOR); one
the cluster cannot give is refused with a reason that names the setting, not retried for ever.

Before, every topic the services and the set-up created had one copy, whatever the cluster: the loss of
one broker lost acknowledged events. The session's broker is a single one, so what is checked here is
the request: two copies are refused by it, one is made."""

from __future__ import annotations

import pytest
from kafka import KafkaAdminClient
from kafka.admin import ConfigResource, ConfigResourceType

from services.common.bus import TopicsNotCreated, ensure_topics

pytestmark = pytest.mark.integration


def test_more_copies_than_brokers_is_said_plainly(kafka_bootstrap: str, unique_name: str) -> None:
    with pytest.raises(TopicsNotCreated) as refused:
        ensure_topics(kafka_bootstrap, [f"{unique_name}.a"], partitions=1, replication_factor=2)
    assert "IMX_TOPIC_REPLICATION_FACTOR" in str(refused.value)


def test_a_topic_of_one_copy_keeps_the_brokers_min_insync(kafka_bootstrap: str, unique_name: str) -> None:
    topic = f"{unique_name}.b"
    assert ensure_topics(kafka_bootstrap, [topic], partitions=1, replication_factor=1) == [topic]
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        described = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)], config_filter="All")
    finally:
        admin.close()
    # kafka-python 3: {resource type: {resource name: {config key: {config data}}}}
    (by_name,) = described.values()
    entries = {key: entry.get("value") if isinstance(entry, dict) else entry for key, entry in by_name[topic].items()}
    assert entries["max.message.bytes"] == "16777216"
    assert entries["min.insync.replicas"] == "1"
