"""The devstack's broker is sized for two cores: few threads, and no metadata record twice a second."""

from __future__ import annotations

from pathlib import Path

from tools.devstack.servers import kafka_config


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
