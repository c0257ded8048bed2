"""What operators did with each dead letter, kept beside the dead-letter topic in MongoDB: one document
per letter, `_id` = `<partition>:<offset>`, with `replayed_at_ms` (sent back to its source topic) and
`discarded_at_ms` (never to be replayed: the objects it names are no longer kept for it), with the letter's
own Kafka timestamp (`letter_ms`): a position names another letter once the topic is made again (offsets
start from 0), and a discard must not apply to that one. Written by audit's DeadLetterAdmin; read by it and
by the blob lifecycle (services/common/dead_letter_blobs.py)."""

from __future__ import annotations

from collections.abc import Mapping

from pymongo.database import Database

HANDLED = "dead_letter_replays"  # its first use named it; documents of every earlier release are here
REPLAYED = "replayed_at_ms"
DISCARDED = "discarded_at_ms"
LETTER_MS = "letter_ms"


def position(partition: int, offset: int) -> str:
    return f"{partition}:{offset}"


def discarded_at(handled: Mapping[str, int], letter_ms: int) -> int:
    """When the letter with Kafka timestamp `letter_ms` was discarded, by the document of its position
    (0: not discarded, or the discard was of another letter at that position)."""
    return int(handled.get(DISCARDED, 0)) if handled.get(LETTER_MS) == letter_ms else 0


def discarded_positions(db: Database) -> dict[str, int]:
    """Every discarded letter's position, with the letter's timestamp (a scan of the few documents
    operators wrote)."""
    found = db[HANDLED].find({DISCARDED: {"$gt": 0}}, {LETTER_MS: 1})
    return {str(doc["_id"]): int(doc.get(LETTER_MS, -1)) for doc in found}
