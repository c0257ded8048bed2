"""How often a stage's Kafka client refreshes its view of the topics: a pattern's refresh reads every
topic on the broker, so audit and delivery do it as often as the settings ask, the listed stages often."""

from __future__ import annotations

import pytest

from services.audit.consumer import audit_stage_spec
from services.common.bus import METADATA_MAX_AGE_MS
from services.common.runtime import StageSpec, metadata_max_age_ms
from services.common.settings import ServiceSettings
from services.common.topics import Topics


def test_a_pattern_stage_looks_for_new_partner_topics_as_often_as_the_setting_says(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("IMX_PARTNER_TOPIC_DISCOVERY_S", "12.5")
    assert metadata_max_age_ms(audit_stage_spec(Topics()), ServiceSettings()) == 12_500


def test_by_default_a_new_partner_topic_is_found_within_half_a_minute() -> None:
    assert metadata_max_age_ms(audit_stage_spec(Topics()), ServiceSettings()) == 30_000


def test_a_stage_reading_listed_topics_keeps_the_bus_default() -> None:
    routing = StageSpec(name="routing", group_id="imx-routing", topics=[Topics().ingested])
    assert metadata_max_age_ms(routing, ServiceSettings(partner_topic_discovery_s=120)) == METADATA_MAX_AGE_MS


@pytest.mark.parametrize("seconds", ["0", "0.5", "301"])
def test_a_discovery_interval_outside_one_second_to_five_minutes_is_refused(
    monkeypatch: pytest.MonkeyPatch, seconds: str
) -> None:
    monkeypatch.setenv("IMX_PARTNER_TOPIC_DISCOVERY_S", seconds)
    with pytest.raises(ValueError, match="partner_topic_discovery_s"):
        ServiceSettings()
