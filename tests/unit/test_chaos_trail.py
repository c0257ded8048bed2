"""What `make chaos` counts as missing from the audit trail of its ledgered run (tools/chaos_trail.py)."""

from __future__ import annotations

from typing import Any

from tools.chaos_figures import misses
from tools.chaos_trail import trail_gaps

MET = {"lost": 0, "duplicated": 0, "crashes": 0, "hangs": 0, "unaccounted": 0, "max_rss_mb": 400.0}


def journey(sop: str, delivered_as: str, stored: bool = True) -> list[dict[str, Any]]:
    """The events of one instance sent as `sop` and de-identified to `delivered_as`, as the API lists them."""
    events: list[dict[str, Any]] = [
        {"event_type": "ingested", "sop_uid": sop},
        {"event_type": "routed", "sop_uid": sop},
        {"event_type": "prepared", "sop_uid": sop, "delivered_sop_uid": delivered_as},
        {"event_type": "outcome", "sop_uid": sop, "delivered_sop_uid": delivered_as, "status": "delivered"},
    ]
    if stored:
        events.append({"event_type": "receipt", "sop_uid": None, "delivered_sop_uid": delivered_as, "status": "stored"})
    return events


def test_a_whole_trail_has_no_gaps() -> None:
    events = journey("1.1", "2.1") + journey("1.2", "2.2")
    assert trail_gaps(events, {"1.1", "1.2"}, {"1.1", "1.2"}) == dict.fromkeys(
        ("ingested", "routed", "prepared", "delivered", "stored"), 0
    )


def test_each_missing_hop_is_counted_against_what_the_ledger_saw() -> None:
    first, second = journey("1.1", "2.1", stored=False), journey("1.2", "2.2")
    events = first + [e for e in second if e["event_type"] != "routed"]
    # 1.3 was acknowledged but never arrived: only its missing `ingested` counts.
    gaps = trail_gaps(events, {"1.1", "1.2", "1.3"}, {"1.1", "1.2"})
    assert gaps == {"ingested": 1, "routed": 1, "prepared": 0, "delivered": 0, "stored": 1}


def test_a_receipt_counts_only_for_the_instance_its_outcome_delivered() -> None:
    events = journey("1.1", "2.1", stored=False)
    events.append({"event_type": "receipt", "sop_uid": None, "delivered_sop_uid": "9.9", "status": "stored"})
    events.append({"event_type": "receipt", "sop_uid": None, "delivered_sop_uid": "2.1", "status": "failed"})
    assert trail_gaps(events, {"1.1"}, {"1.1"})["stored"] == 1


def test_a_failed_outcome_is_not_a_delivery() -> None:
    events = [e for e in journey("1.1", "2.1") if e["event_type"] != "outcome"]
    events.append({"event_type": "outcome", "sop_uid": "1.1", "delivered_sop_uid": "2.1", "status": "failed"})
    gaps = trail_gaps(events, {"1.1"}, {"1.1"})
    assert (gaps["delivered"], gaps["stored"]) == (1, 1)  # a receipt without a delivery is not linked


def test_gaps_in_the_trail_are_a_missed_target() -> None:
    assert misses({**MET, "audit_gaps": dict.fromkeys(("ingested", "stored"), 0)}) == []
    assert misses({**MET, "audit_gaps": None}) == []  # no ledgered run to check
    [missed] = misses({**MET, "audit_gaps": {"ingested": 0, "stored": 3}})
    assert missed.startswith("audit_gaps 3 (target 0")
