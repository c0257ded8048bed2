from __future__ import annotations

import json
import logging

from services.common.logs import PhiSafeJsonFormatter


def _format(msg: str, args: tuple[object, ...] = (), **extra: object) -> dict[str, object]:
    record = logging.LogRecord("t", logging.INFO, __file__, 1, msg, args, None)
    for key, value in extra.items():
        setattr(record, key, value)
    return json.loads(PhiSafeJsonFormatter("ingest").format(record))  # type: ignore[no-any-return]


def test_only_allow_listed_fields_are_logged() -> None:
    entry = _format("instance stored", event_id="e1", patient_name="DOE^JANE")
    assert entry["event_id"] == "e1"
    assert "patient_name" not in entry
    assert "DOE" not in json.dumps(entry)


def test_format_arguments_are_never_rendered() -> None:
    entry = _format("received %s", ("DOE^JANE",))
    assert "DOE" not in json.dumps(entry)
    assert entry["msg"] == "received %s"


def test_the_record_purges_line_carries_both_its_counts() -> None:
    """services/delivery/record_retention.py logs the studies forgotten and those kept as still owed."""
    entry = _format("delivered records purged", count=3, kept_owed=2)
    assert (entry["count"], entry["kept_owed"]) == (3, 2)
