"""Whether a page's copy says what its record does (pure): audit's own read time aside, and an edit of
any other field, or of a field's type, is a difference (never an error that ends the check)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from services.audit.page_verify import page_kind, says_the_same
from services.audit.records import RECORD_FIELDS

T = datetime(2026, 1, 1, 8, 0, tzinfo=UTC)
RECORD = {**dict.fromkeys(RECORD_FIELDS), "_id": "stored:1", "occurred_at": T, "recorded_at": T, "status": "ok"}


def test_a_copy_paged_again_later_says_the_same() -> None:
    assert says_the_same(RECORD, RECORD)
    assert says_the_same({**RECORD, "recorded_at": T + timedelta(seconds=30)}, RECORD)
    assert says_the_same({**RECORD, "occurred_at": T.replace(tzinfo=None)}, RECORD), "BSON's naive UTC"


def test_an_edit_of_a_value_or_of_its_type_is_a_difference() -> None:
    assert not says_the_same({**RECORD, "status": "failed"}, RECORD)
    assert not says_the_same({**RECORD, "partner_id": "somewhere-else"}, RECORD)
    assert not says_the_same(RECORD, {**RECORD, "occurred_at": "yesterday"})


def test_a_finding_names_the_kind_of_page_never_its_key() -> None:
    assert page_kind("s:1.2.826.0.1.3680043#0") == "study" and page_kind("m:1767254400000#2") == "minute"
    assert page_kind("x") == "other"


class _Pages:
    """Stands in for the pages collection: `find` yields the given pages."""

    def __init__(self, pages: list[dict[str, object]]) -> None:
        self._pages = pages

    def find(self, *_: object) -> list[dict[str, object]]:
        return self._pages


def test_the_cutoff_is_read_once_unless_a_missed_copy_is_newer_than_it() -> None:
    """Purge leftovers (copies recorded before the cutoff, their records gone) cost a database read each."""
    from services.audit.log_verify import VerifyReport
    from services.audit.page_verify import verify_pages
    from services.audit.pages import pack

    old = [{**RECORD, "_id": f"old:{n}"} for n in range(50)]
    new = {**RECORD, "_id": "new:1", "recorded_at": T + timedelta(days=40)}
    page = {"_id": "m:1#0", **pack([*old, new])}
    reads: list[int] = []
    cutoffs = iter([int((T + timedelta(days=30)).timestamp() * 1000), int((T + timedelta(days=50)).timestamp() * 1000)])

    def cutoff() -> int:
        reads.append(1)
        return next(cutoffs)

    report = VerifyReport()
    verify_pages(_Pages([page]), {}, cutoff, report, limit=10)  # type: ignore[arg-type]
    assert len(reads) == 2, "once at the start, once for the newer miss"
    assert report.findings == [], "the newer miss was purged meanwhile (the second read's cutoff is later)"


def test_a_checkpoint_read_again_during_the_check_counts_only_when_signed() -> None:
    """verify_log checks the checkpoint's signature once, at the start; the page check reads it again at a
    newer miss. One put there meanwhile with a later cutoff would have excused every copy taken away."""
    from services.audit.log_admin import purged_before_ms
    from services.audit.signing import Signer, checkpoint_message

    signer = Signer.generate()
    root = bytes(32)
    signed = {"purged_to": 5, "ts": 10, "root": root, "cutoff": 1_000, "frontier": []}
    signed["sig"] = signer.sign(checkpoint_message(5, 10, root, 1_000))

    class Tree:
        def __init__(self, doc: dict[str, object] | None) -> None:
            self.doc = doc

        def get(self, _id: str) -> dict[str, object] | None:
            return self.doc

    assert purged_before_ms(Tree(signed), signer.public_key) == 1_000  # type: ignore[arg-type]
    moved = {**signed, "cutoff": 9_999_999}
    assert purged_before_ms(Tree(moved), signer.public_key) == 0  # type: ignore[arg-type]
    assert purged_before_ms(Tree(signed), Signer.generate().public_key) == 0  # type: ignore[arg-type]
    assert purged_before_ms(Tree(None), signer.public_key) == 0  # type: ignore[arg-type]
