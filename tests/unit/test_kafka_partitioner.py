"""Messages go to the partition every Kafka client would choose for their key (murmur2), so a study stays
in order on one partition whichever producer wrote it."""

from __future__ import annotations

import pytest
from kafka.partitioner import DefaultPartitioner

from services.common.kafka_partitioner import RememberingPartitioner


class _Cluster:
    def __init__(self, partitions: dict[str, set[int]]) -> None:
        self._partitions = partitions

    def topics(self) -> set[str]:
        return set(self._partitions)

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        return self._partitions.get(topic)

    def available_partitions_for_topic(self, topic: str) -> set[int]:
        return self._partitions.get(topic, set())


KEYS = [f"1.2.826.0.1.3680043.8.498.{n}".encode() for n in range(300)] + [b"", b"a", b"bench-partner"]


@pytest.mark.parametrize("count", [1, 2, 3, 6, 12, 50])
def test_every_key_goes_where_kafkas_default_partitioner_sends_it_and_again_the_second_time(count: int) -> None:
    cluster = _Cluster({"imx.ingested": set(range(count))})
    ours, theirs = RememberingPartitioner(), DefaultPartitioner()

    for _ in range(2):  # the second pass answers from what the first remembered
        for key in KEYS:
            expected = theirs.partition("imx.ingested", key, key, b"v", b"v", cluster)
            assert ours.partition("imx.ingested", key, key, b"v", b"v", cluster) == expected


def test_a_study_moves_with_the_partition_count_as_kafkas_choice_does() -> None:
    key = KEYS[7]
    ours = RememberingPartitioner()
    choices = {n: ours.partition("t", key, key, None, None, _Cluster({"t": set(range(n))})) for n in (4, 5)}

    assert choices == {
        n: DefaultPartitioner().partition("t", key, key, None, None, _Cluster({"t": set(range(n))})) for n in (4, 5)
    }


def test_a_keyless_message_goes_to_an_available_partition() -> None:
    cluster = _Cluster({"t": {0, 1, 2}})

    assert RememberingPartitioner().partition("t", None, None, b"v", b"v", cluster) in {0, 1, 2}


def test_a_topic_without_metadata_is_refused_as_kafka_refuses_it() -> None:
    with pytest.raises(ValueError, match="not found"):
        RememberingPartitioner().partition("unknown", b"k", b"k", b"v", b"v", _Cluster({}))
