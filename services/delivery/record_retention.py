"""Forgetting what was delivered, once it no longer serves anyone: a study's records (the index behind the
partner's DICOMweb retrieval, its manifests) go `IMX_DELIVERY_RECORD_RETENTION_DAYS` whole days after its
last delivery, unless an instance of it was never reported stored by the partner's gateway (then the
partner is still owed it, and its objects and records are kept). The objects themselves went long before
(blob lifecycle, seven days), so a retrieval of such a study was already answered 410 Gone; afterwards it
is 404, as for anything never delivered. Audit keeps the study's trail under its own retention.

Without this, `delivered_instances` grew by a document per instance per partner for ever: the national
load (~12 million studies a year) is billions of documents. Days are found by an equality on each study's
last day (delivered.py LAST_DAY, indexed), one day at a time from where the last run stopped, so a run
reads only the studies it may forget.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from services.common.settings import DAY_MS
from services.delivery.delivered import FORGOTTEN, OWED_STUDY, DeliveredObjects
from services.delivery.purge_state import PurgeState

log = logging.getLogger(__name__)

# One replica purges at a time: its lease lasts this long unless renewed, which it is every
# LEASE_RENEWAL_STUDIES studies (each a few hundred round trips at most); a replica that died holding it
# holds up the others this long.
PURGE_LEASE_MS = 10 * 60 * 1000
LEASE_RENEWAL_STUDIES = 20


def days_to_purge(purged_through: int, today: int, retention_days: int) -> range:
    """The days whose studies may now be forgotten: after the last one done, up to the last day that
    ended `retention_days` whole days ago."""
    return range(purged_through + 1, today - retention_days)


def purge_records(
    delivered: DeliveredObjects, state: PurgeState, retention_days: int, clock: Callable[[], int]
) -> tuple[int, int]:
    """Forget the studies of every day due, and, when a day is due, those kept before as owed that no
    longer are; (studies forgotten, studies kept because still owed). A day is marked done only once all
    its studies were looked at, so a run stopped half way does it again. Runs only while it holds the
    lease (taken at the start, renewed as it goes): nothing, (0, 0), while another replica's runs, and it
    stops where it is if its lease was lost (another replica then goes on from the last day done)."""
    if not state.take_lease(clock(), PURGE_LEASE_MS):
        return 0, 0
    today = clock() // DAY_MS
    done = state.purged_through()
    if done is None:
        first = delivered.first_day_of_studies(today)
        done = (today if first is None else first) - 1
        state.set_purged_through(done)
    due = days_to_purge(done, today, retention_days)
    if not due:
        return 0, 0
    delivered.settle_receipts()  # a study is owed until its gateways' receipts are folded in
    delivered.flag_unflagged()  # and until stored ones an earlier release folded are unflagged
    if state.stamp_scan_due(today):
        state.stamp_scanned(today, delivered.stamp_unstamped_studies(due.start, today))
    if not _lease_kept(state, clock, 0):  # the scans may have taken a while
        return 0, 0
    retired = delivered.retired_partners()
    forgotten = kept = 0
    # Once a day, with the day's studies: those kept as owed (never stored: dead-lettered at the gateway,
    # expired unread) are read again, whole, each day they stay.
    for n, (partner_id, study_uid, day) in enumerate(state.held_studies()):
        if not _lease_kept(state, clock, n):
            return forgotten, kept
        outcome = delivered.forget_study(partner_id, study_uid, day, retired)
        if outcome == OWED_STUDY:
            kept += 1
        else:  # forgotten, or delivered to since: its new day finds it
            forgotten += outcome == FORGOTTEN
            state.release(partner_id, study_uid, day)
    for day in due:
        for n, (partner_id, study_uid) in enumerate(delivered.studies_last_delivered_on(day)):
            if not _lease_kept(state, clock, n):
                return forgotten, kept
            outcome = delivered.forget_study(partner_id, study_uid, day, retired)
            forgotten += outcome == FORGOTTEN
            if outcome == OWED_STUDY:
                kept += 1
                state.hold(partner_id, study_uid, day)
        state.set_purged_through(day)
    return forgotten, kept


def _lease_kept(state: PurgeState, clock: Callable[[], int], studies_done: int) -> bool:
    """Whether this replica still holds the lease, renewed every LEASE_RENEWAL_STUDIES studies."""
    return studies_done % LEASE_RENEWAL_STUDIES != 0 or state.take_lease(clock(), PURGE_LEASE_MS)


def purge_records_every(
    delivered: DeliveredObjects,
    state: PurgeState,
    retention_days: int,
    interval_s: float,
    stop: threading.Event,
    clock: Callable[[], int],
) -> None:
    """The purge on a timer, in the delivery service (each replica; one at a time runs it, `PurgeState`)."""
    while not stop.wait(interval_s):
        try:
            forgotten, kept = purge_records(delivered, state, retention_days, clock)
        except Exception as error:  # the database is away: next round
            log.warning("delivered records purge failed", extra={"error": type(error).__name__})
            continue
        if forgotten or kept:
            log.info("delivered records purged", extra={"count": forgotten, "kept_owed": kept})
