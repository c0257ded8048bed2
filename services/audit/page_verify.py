"""Verification of the pages analysts read against the records the log covers (`imx audit verify`).

A study's trail, the event listings and the exports are read from pages (pages.py): copies of the
records, a chain per minute and per study. `log_verify` checks the records against the signed log; this
checks every copy on every page against its record, so an edited page is named too:

- `page_changed`: a page's copy of a record differs from the record (but for `recorded_at`, audit's own
  clock when it read the event, which the log does not cover either: a batch stored again after a crash
  has its copies paged with the later time).
- `page_unknown`: a page holds a record the store does not have, and which retention cannot have purged
  (it was recorded at or after the latest checkpoint's cutoff, retention.py, read again when a record is
  missed: a purge may run while verification does): a record made up.
- `page_unreadable`: a page that cannot be read, or a copy on it without an `_id` or a time.

Not found here: a copy taken off a page (retention rewrites study chains without the records it purges,
so a page short of a record is not in itself a sign), or a record made up with a time before the cutoff.

Each copy costs one read of its record by `_id` (a record has two or three copies: its minute's, its
study's, its de-identified study's), `workers` at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

from pymongo.collection import Collection

from services.audit.log_entries import EXCLUDED_FIELDS
from services.audit.log_verify import Finding, RecordSource, VerifyReport
from services.audit.pages import record_json, unpack
from services.audit.records import AuditRecord, to_epoch_ms
from services.audit.tamper_log import unavailable_is_transient

COPIES_AT_ONCE = 512


def page_kind(page_id: str) -> str:
    """What a page lists, for a finding (never its key: a study's key is its UID)."""
    return {"m": "minute", "s": "study"}.get(page_id.split(":", 1)[0], "other")


def page_copies(pages: Collection[dict[str, Any]]) -> Iterator[list[tuple[str, AuditRecord | None]]]:
    """Every page's records as (the page's kind, the copy), COPIES_AT_ONCE or so at a time; a page that
    cannot be read is one (kind, None)."""
    group: list[tuple[str, AuditRecord | None]] = []
    with unavailable_is_transient():
        for page in pages.find({}, {"b": 1, "f": 1}):
            kind = page_kind(str(page["_id"]))
            try:
                group += ((kind, copy) for copy in unpack(page))
            except Exception:  # edited into something that is not a page: named, and the rest still checked
                group.append((kind, None))
            if len(group) >= COPIES_AT_ONCE:
                yield group
                group = []
    if group:
        yield group


def says_the_same(copy: Mapping[str, Any], original: Mapping[str, Any]) -> bool:
    """Whether the copy says what the record does (`recorded_at` aside). A value of the wrong type on either
    side (an edit) is a difference, not an error ending the check."""
    try:
        return record_json({**copy, **dict.fromkeys(EXCLUDED_FIELDS)}) == record_json(
            {**original, **dict.fromkeys(EXCLUDED_FIELDS)}
        )
    except (TypeError, ValueError, AttributeError, OverflowError):
        return False


def verify_pages(
    pages: Collection[dict[str, Any]],
    records: RecordSource,
    purged_before_ms: Callable[[], int],
    report: VerifyReport,
    limit: int,
    workers: int = 8,
) -> None:
    """Adds to `report` what the pages hold that their records do not say (see the module's docstring).
    `purged_before_ms`: the latest retention checkpoint's cutoff (0: none), asked once at the start and
    again only for a missed record newer than the cutoff known (a purge may have moved it meanwhile): the
    purge's leftovers, copies recorded before it, cost no read each."""
    cutoff = purged_before_ms()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="audit-verify-pages") as pool:
        for group in page_copies(pages):
            originals = pool.map(lambda pair: _original(records, pair[1]), group)
            for (kind, copy), original in zip(group, originals, strict=True):
                report.page_copies_checked += 1
                if copy is None or not _readable(copy):
                    detail = f"a {kind} page cannot be read, or holds a copy without an id or a time"
                    report.add(Finding("page_unreadable", detail=detail), limit)
                elif original is None:
                    recorded = to_epoch_ms(copy["recorded_at"])
                    if recorded >= cutoff:
                        cutoff = purged_before_ms()
                    if recorded >= cutoff:
                        detail = f"a {kind} page holds a record the store does not have"
                        report.add(Finding("page_unknown", record_id=str(copy["_id"]), detail=detail), limit)
                elif not says_the_same(copy, original):
                    detail = f"a {kind} page's copy differs from the record"
                    report.add(Finding("page_changed", record_id=str(copy["_id"]), detail=detail), limit)


def _readable(copy: AuditRecord) -> bool:
    return isinstance(copy.get("_id"), str) and isinstance(copy.get("recorded_at"), datetime)


def _original(records: RecordSource, copy: AuditRecord | None) -> Mapping[str, Any] | None:
    return records.get(copy["_id"]) if copy is not None and _readable(copy) else None
