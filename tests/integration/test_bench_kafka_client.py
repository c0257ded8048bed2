"""`make bench-kafka-client`'s imx stage against the session's broker: every paced record is forwarded and
its offsets committed, and the run reports the stage's CPU (librdkafka's stage needs its own environment,
which only the benchmark installs)."""

from __future__ import annotations

import sys
from pathlib import Path

from kafka import KafkaConsumer, TopicPartition

from tools.bench_kafka_client import Hop, create_topics, one_run


def test_the_imx_stage_forwards_every_record_and_commits(kafka_bootstrap: str, unique_name: str) -> None:
    hop = Hop.numbered(0, unique_name)
    create_topics(kafka_bootstrap, [hop])
    readings = iter([1.0, 1.25])  # broker CPU seconds before and after the paced records
    run = one_run(
        "hop", "imx", Path(sys.executable), kafka_bootstrap, hop, lambda: next(readings), 40, 400.0, b"x" * 100
    )
    assert (run.mode, run.client) == ("hop", "imx") and run.version.startswith("kafka-python")
    assert run.records >= 40 and run.stage_cpu_ms > 0
    assert run.broker_cpu_ms == 0.25 * 1000 / 40
    reader = KafkaConsumer(bootstrap_servers=kafka_bootstrap, group_id=hop.group, enable_auto_commit=False)
    try:
        partitions = [TopicPartition(t, p) for t in (hop.source, hop.target) for p in reader.partitions_for_topic(t)]
        ends = reader.end_offsets(partitions)
        assert sum(n for tp, n in ends.items() if tp.topic == hop.target) == 41  # the warm-up one too
        committed = {tp: reader.committed(tp) or 0 for tp in partitions if tp.topic == hop.source}
        assert committed == {tp: n for tp, n in ends.items() if tp.topic == hop.source}
    finally:
        reader.close()


def test_the_imx_reader_commits_everything_and_publishes_nothing(kafka_bootstrap: str, unique_name: str) -> None:
    hop = Hop.numbered(0, unique_name, mode="read")
    create_topics(kafka_bootstrap, [hop])
    run = one_run("read", "imx", Path(sys.executable), kafka_bootstrap, hop, lambda: 0.0, 30, 400.0, b"y" * 100)
    assert run.records >= 30 and run.stage_cpu_ms > 0
    reader = KafkaConsumer(bootstrap_servers=kafka_bootstrap, group_id=hop.group, enable_auto_commit=False)
    try:
        partitions = [TopicPartition(hop.source, p) for p in reader.partitions_for_topic(hop.source)]
        ends = reader.end_offsets(partitions)
        assert sum(ends.values()) == 31
        assert {tp: reader.committed(tp) or 0 for tp in partitions} == ends
        assert f"{unique_name}-out-0" not in reader.topics()
    finally:
        reader.close()
