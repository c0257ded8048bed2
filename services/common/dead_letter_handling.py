"""What operators did with each dead letter, kept beside the dead-letter topic in MongoDB: one document
per letter, `_id` = `<partition>:<offset>`, with `replayed_at_ms` (sent back to its source topic) and
`discarded_at_ms` (never to be replayed: the objects it names are no longer kept for it). Written by
audit's DeadLetterAdmin; read by it and by the blob lifecycle (services/common/dead_letter_blobs.py)."""

from __future__ import annotations

from pymongo.database import Database

HANDLED = "dead_letter_replays"  # its first use named it; documents of every earlier release are here
REPLAYED = "replayed_at_ms"
DISCARDED = "discarded_at_ms"


def position(partition: int, offset: int) -> str:
    return f"{partition}:{offset}"


def discarded_positions(db: Database) -> set[str]:
    """Every discarded letter's position (a scan of the few documents operators wrote)."""
    return {str(doc["_id"]) for doc in db[HANDLED].find({DISCARDED: {"$gt": 0}}, {"_id": 1})}
