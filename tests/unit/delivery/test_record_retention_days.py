"""Which days' studies the delivered-record purge may forget (pure)."""

from services.delivery.record_retention import days_to_purge


def test_the_days_due_are_those_after_the_last_done_that_ended_the_retention_ago() -> None:
    # Today is day 100: day 9 ended 90 whole days ago (its last moment is before day 10 began), day 10 not yet.
    assert list(days_to_purge(purged_through=5, today=100, retention_days=90)) == [6, 7, 8, 9]


def test_nothing_is_due_twice_nor_before_its_time() -> None:
    assert list(days_to_purge(purged_through=9, today=100, retention_days=90)) == []
    assert list(days_to_purge(purged_through=99, today=100, retention_days=90)) == []


def test_a_study_recorded_without_a_last_day_gets_its_last_deliverys_never_one_already_purged() -> None:
    from services.common.settings import DAY_MS
    from services.delivery.delivered import stamped_day

    assert stamped_day(12 * DAY_MS + 5, floor=10, today=100) == 12
    assert stamped_day(5 * DAY_MS + 1, floor=10, today=100) == 10, "a day done is never read again"
    assert stamped_day(0, floor=10, today=100) == 100, "no time: kept the retention from now"
