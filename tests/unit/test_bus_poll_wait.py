"""A stage's poll must not give up before the broker answers the fetch it is waiting for."""

from services.audit.consumer import FETCH_MAX_WAIT_MS as AUDIT_FETCH_MAX_WAIT_MS
from services.common.bus import FETCH_MAX_WAIT_MS, IDLE_FETCH_MAX_WAIT_MS, POLL_MARGIN_MS, poll_wait_ms


def test_a_poll_outlasts_audits_long_fetch() -> None:
    # An empty poll commits at once: a poll shorter than audit's fetch made every other poll empty.
    assert poll_wait_ms(500, AUDIT_FETCH_MAX_WAIT_MS) > AUDIT_FETCH_MAX_WAIT_MS
    assert poll_wait_ms(500, AUDIT_FETCH_MAX_WAIT_MS) == AUDIT_FETCH_MAX_WAIT_MS + POLL_MARGIN_MS


def test_the_pipeline_stages_keep_their_poll() -> None:
    assert poll_wait_ms(500, FETCH_MAX_WAIT_MS) == 500
    assert poll_wait_ms(500, FETCH_MAX_WAIT_MS) > FETCH_MAX_WAIT_MS


def test_an_idle_stage_hears_of_an_empty_fetch_within_one_poll() -> None:
    assert poll_wait_ms(500, IDLE_FETCH_MAX_WAIT_MS) >= IDLE_FETCH_MAX_WAIT_MS
