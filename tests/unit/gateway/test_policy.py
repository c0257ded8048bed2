"""Backoff: exponential, jittered, capped; attempts counted as the policy says."""

from __future__ import annotations

import pytest

from services.gateway.policy import RetryPolicy


def test_delays_grow_exponentially_with_bounded_jitter_and_never_pass_the_cap() -> None:
    policy = RetryPolicy(initial_s=1.0, cap_s=30.0, jitter_s=0.5)
    for attempt, base in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 16.0)]:
        delays = {policy.delay_s(attempt) for _ in range(50)}
        assert all(base <= d <= base + 0.5 for d in delays)
        assert len(delays) > 1, "jitter spreads gateways that failed together"
    assert all(policy.delay_s(n) <= 30.0 for n in range(6, 40))
    assert policy.delay_s(40) == pytest.approx(30.0)


def test_an_instance_gives_up_after_its_attempts_and_integrity_failures_or_aborts_sooner() -> None:
    policy = RetryPolicy(max_attempts=5, few_attempts=2)
    assert not policy.gives_up(4) and policy.gives_up(5)
    assert not policy.gives_up(1, few=True) and policy.gives_up(2, few=True)
    assert RetryPolicy(max_attempts=1).gives_up(1, few=True)


def test_at_least_one_attempt() -> None:
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)


def test_an_unreachable_target_is_tried_again_within_the_smaller_cap_with_jitter() -> None:
    policy = RetryPolicy(initial_s=1.0, cap_s=300.0, unreachable_cap_s=30.0, jitter_s=0.5)
    for attempt, base in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 16.0)]:
        delays = {policy.delay_s(attempt, unreachable=True) for _ in range(50)}
        assert all(base <= d <= base + 0.5 for d in delays)
        assert len(delays) > 1, "jitter spreads gateways that waited for the same PACS"
    assert all(policy.delay_s(n, unreachable=True) <= 30.0 for n in range(6, 60))
    assert policy.delay_s(40, unreachable=True) == pytest.approx(30.0)
    assert policy.delay_s(40) == pytest.approx(300.0), "failures the target answered keep the long cap"


def test_the_unreachable_cap_never_exceeds_the_cap() -> None:
    assert RetryPolicy(cap_s=5.0, unreachable_cap_s=30.0).delay_s(40, unreachable=True) == pytest.approx(5.0)
    with pytest.raises(ValueError):
        RetryPolicy(unreachable_cap_s=0)
