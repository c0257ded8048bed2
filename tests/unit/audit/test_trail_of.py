"""`trail_of`: which records a study's trail holds when its chains repeat records (replays)."""

from __future__ import annotations

from collections.abc import Container
from datetime import UTC, datetime

from services.audit.records import AuditRecord, build_record
from services.audit.store import trail_of
from services.common.topics import Topics
from tests.unit.audit.builders import Instance, incoming, journey

TOPICS = Topics("t-to.")


def test_the_first_copy_of_a_repeated_record_is_kept_and_known_ones_need_not_be_read_again() -> None:
    study = Instance()
    messages = journey(TOPICS, study)
    first = [build_record(incoming(m), TOPICS, datetime(2026, 2, 1, tzinfo=UTC)) for m in messages]
    again = [build_record(incoming(m), TOPICS, datetime(2026, 2, 2, tzinfo=UTC)) for m in messages]  # redelivered
    copy_uid = study.remapped().study
    chains = {  # each chain holds the records naming its study, in the order they were written
        uid: [r for r in [*first, *again] if uid in (r["study_uid"], r["delivered_study_uid"])]
        for uid in (study.study, copy_uid)
    }
    asked: list[tuple[str, set[str]]] = []

    def chain(uid: str, known: Container[str]) -> list[AuditRecord]:
        asked.append((uid, {r["_id"] for r in chains[uid] if r["_id"] in known}))
        return chains[uid]

    trail = trail_of(study.study, chain)
    assert sorted(trail, key=lambda r: r["_id"]) == sorted(first, key=lambda r: r["_id"])
    named_by_both = {r["_id"] for r in first if r["study_uid"] and r["delivered_study_uid"]}
    assert asked == [(study.study, set()), (copy_uid, named_by_both)], "the copy's chain is told what is found"
