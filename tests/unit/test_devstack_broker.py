"""The devstack's broker is sized for two cores: few threads, and no metadata record twice a second."""

from __future__ import annotations

from pathlib import Path

from tools.devstack.servers import BROKER_INDEX_BYTES, kafka_config


def settings_of(config: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in config.splitlines() if line)


def test_the_broker_runs_few_threads_and_a_quiet_metadata_log() -> None:
    settings = settings_of(kafka_config(9092, 9093, Path("/tmp/logs"), 9094, admin_password="secret"))
    assert settings["num.io.threads"] == "2"
    assert settings["num.network.threads"] == "1"
    assert settings["group.coordinator.threads"] == "1"
    assert settings["metadata.max.idle.interval.ms"] == "5000"


def test_sizing_leaves_durability_settings_at_kafkas_defaults() -> None:
    settings = settings_of(kafka_config(9092, 9093, Path("/tmp/logs")))
    assert not [key for key in settings if key.startswith("log.flush") or key == "min.insync.replicas"]


def test_indexes_are_small_but_hold_a_large_segment() -> None:
    """A new index costs a fault over its whole size here (BROKER_INDEX_BYTES); small enough to be cheap,
    large enough that a segment does not roll long before Kafka's 1 GiB because its time index is full."""
    settings = settings_of(kafka_config(9092, 9093, Path("/tmp/logs")))
    assert int(settings["log.index.size.max.bytes"]) == BROKER_INDEX_BYTES <= 1 << 20
    time_index_entries = BROKER_INDEX_BYTES // 12  # Kafka's time-index entry: 8-byte time, 4-byte offset
    assert time_index_entries * 4096 >= 256 << 20  # one entry per 4 KiB of log, Kafka's default interval
