"""The scheduled purge works off a backlog: a run that stopped at its cap (100,000 records) is followed by
the next at once. Before, one capped run an hour purged at most 2.4 million records a day, so a log
growing faster than that was never brought down to its retention age."""

from __future__ import annotations

import threading

from services.audit.retention import PurgeResult, run_retention


class Backlog:
    def __init__(self, capped_runs: int, stop: threading.Event) -> None:
        self.left, self.calls, self._stop = capped_runs, 0, stop

    def purge(self) -> PurgeResult:
        self.calls += 1
        if self.calls == self.left + 1:  # the run that finds the backlog gone: no more before the schedule
            self._stop.set()
        capped = self.calls <= self.left
        return PurgeResult(purged_to=self.calls, deleted=100_000 if capped else 5, checkpoint_size=0, capped=capped)


def test_capped_runs_follow_each_other_without_waiting_for_the_schedule() -> None:
    stop = threading.Event()
    backlog = Backlog(capped_runs=3, stop=stop)
    # An hour between scheduled runs: the four runs below happen without waiting for it.
    waiter = threading.Thread(target=run_retention, args=(backlog, 3600, stop), daemon=True)
    waiter.start()
    waiter.join(10)
    assert backlog.calls == 4  # three capped runs and the one that found the rest, back to back
    assert not waiter.is_alive()
