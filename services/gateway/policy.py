"""How long to wait before the next attempt: exponential backoff with jitter and a cap (tenacity's
`wait_exponential_jitter`), and when an instance has had its attempts."""

from __future__ import annotations

from dataclasses import dataclass, field

from tenacity import RetryCallState, wait_exponential_jitter


@dataclass(frozen=True)
class RetryPolicy:
    """`max_attempts` counts attempts the target or the source answered (a 0xA700, a 5xx, a digest
    mismatch); waiting for a target that cannot be reached at all spends none of them. Failures that
    say something about the instance rather than the target get at most `few_attempts`: integrity
    failures (wrong SHA-256 or size: a torn read heals in one or two tries, a wrong object does not),
    and a transfer the PACS aborted while it still takes associations (dcmtk aborts on a data set it
    cannot read; each such instance would otherwise hold the partner's feed for ~8 minutes of backoff).

    Waiting for an unreachable target (connection refused, association rejected, a timeout) is capped
    at `unreachable_cap_s` (never above `cap_s`): nothing is spent by trying, and with the longer cap
    a PACS back after a 10-minute outage went unnoticed for up to 5 minutes."""

    max_attempts: int = 10
    initial_s: float = 1.0
    cap_s: float = 300.0
    jitter_s: float = 1.0
    few_attempts: int = 3
    unreachable_cap_s: float = 30.0
    _wait: wait_exponential_jitter = field(init=False, repr=False, compare=False)
    _wait_unreachable: wait_exponential_jitter = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.unreachable_cap_s <= 0:
            raise ValueError("unreachable_cap_s must be positive")
        wait = wait_exponential_jitter(multiplier=self.initial_s, max=self.cap_s, exp_base=2, jitter=self.jitter_s)
        object.__setattr__(self, "_wait", wait)
        unreachable_cap = min(self.cap_s, self.unreachable_cap_s)
        unreachable = wait_exponential_jitter(
            multiplier=self.initial_s, max=unreachable_cap, exp_base=2, jitter=self.jitter_s
        )
        object.__setattr__(self, "_wait_unreachable", unreachable)

    @classmethod
    def capped(cls, max_attempts: int, cap_s: float, unreachable_cap_s: float) -> RetryPolicy:
        """The gateways' policy from their options: the first wait 1 s, or the cap when that is shorter."""
        return cls(
            max_attempts=max_attempts, cap_s=cap_s, initial_s=min(1.0, cap_s), unreachable_cap_s=unreachable_cap_s
        )

    def delay_s(self, attempt: int, unreachable: bool = False) -> float:
        """Seconds to wait after the `attempt`-th failure (1-based): initial·2^(attempt-1) plus up to
        `jitter_s` at random, never more than `cap_s` (`unreachable_cap_s` when the target could not
        be reached)."""
        state = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
        state.attempt_number = max(1, attempt)
        return float((self._wait_unreachable if unreachable else self._wait)(state))

    def gives_up(self, attempts: int, few: bool = False) -> bool:
        limit = min(self.max_attempts, self.few_attempts) if few else self.max_attempts
        return attempts >= limit
