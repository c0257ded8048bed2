"""The routing stage's subscription: its own topic and group under the deployment's prefix, and a
fetch that waits longer than the default so each cycle carries more events."""

from __future__ import annotations

from services.common.bus import FETCH_MAX_WAIT_MS
from services.common.topics import Topics
from services.routing.main import routing_stage_spec


def test_routing_reads_the_ingested_topic_in_its_own_group_and_waits_longer_for_fuller_fetches() -> None:
    topics = Topics("t1-")
    spec = routing_stage_spec(topics)
    assert (spec.name, spec.group_id, list(spec.topics), spec.pattern) == (
        "routing",
        "t1-imx-routing",
        [topics.ingested],
        None,
    )
    assert FETCH_MAX_WAIT_MS < spec.fetch_max_wait_ms <= 500  # more events per cycle, bounded latency
