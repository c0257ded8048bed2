"""What the audit trail lacks for `make chaos`'s ledgered run: the faults include crashes of the database
the trail is written to, and the ledger (tools/chaos_ledger.py) only sees what reached the PACS.

Every instance the sender was told was stored must have its `ingested` event; every one that arrived at
the partner's PACS its `routed`, `prepared`, delivered `outcome` and `stored` receipt too. The trails are
read as `make run` reads them (tools/demo/drain.py), when the consumers are idle: FerretDB reads a whole
collection for every query that is not by `_id`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

HOPS = ("ingested", "routed", "prepared", "delivered", "stored")


def trail_gaps(events: Iterable[Mapping[str, Any]], acknowledged: set[str], arrived: set[str]) -> dict[str, int]:
    """Per hop, how many instances lack its event: `acknowledged` and `arrived` are SOP Instance UIDs as
    sent; `events` the trails' events (the audit API's `AuditEvent`s) of the run's studies."""
    events = list(events)
    seen: dict[str, set[str]] = {hop: set() for hop in HOPS}
    source_of: dict[str, str] = {}  # an instance as the partner got it (de-identified) -> as sent
    for event in events:
        kind, sop = event["event_type"], event.get("sop_uid")
        if sop is None:
            continue
        if kind in ("ingested", "routed", "prepared"):
            seen[kind].add(sop)
        elif kind == "outcome" and event.get("status") == "delivered":
            seen["delivered"].add(sop)
            source_of[event.get("delivered_sop_uid") or sop] = sop
    for event in events:
        # A receipt names the instance as delivered; the outcome before it says which one was sent.
        if event["event_type"] == "receipt" and event.get("status") == "stored":
            source = source_of.get(event.get("delivered_sop_uid") or "")
            if source is not None:
                seen["stored"].add(source)
    return {hop: len((acknowledged if hop == "ingested" else arrived) - seen[hop]) for hop in HOPS}
