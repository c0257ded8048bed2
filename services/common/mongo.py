"""MongoDB connection from settings (FerretDB locally and in CI, MongoDB in production)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pymongo import MongoClient
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import BulkWriteError

from services.common.settings import ServiceSettings


def connect(settings: ServiceSettings) -> tuple[MongoClient, Database]:
    client: MongoClient = MongoClient(
        settings.mongo_uri, serverSelectionTimeoutMS=10_000, connectTimeoutMS=5_000, appname="imx"
    )
    return client, client[settings.mongo_db]


# FerretDB 1.24 holds pooled PostgreSQL connections per statement of a bulk command; many concurrent
# commands of many statements deadlocked it (tools/devstack/servers.py FERRETDB_POOL). Bulk writes go
# in commands of at most this many statements: cheap on MongoDB, safe on FerretDB.
BULK_CHUNK = 25
DUPLICATE_KEY = 11000


def bulk_write_chunked(collection: Collection[dict[str, Any]], operations: Sequence[Any]) -> int:
    """`bulk_write(ordered=False)` in commands of BULK_CHUNK; a duplicate-key failure (an upsert that
    lost a race) means "already there". Guarded upserts do not belong here: FerretDB answers an
    upsert's duplicate key without `nModified`, which pymongo cannot read; insert, then update. Returns
    how many documents the updates matched (none counted for a chunk that failed on a duplicate key)."""
    matched = 0
    for start in range(0, len(operations), BULK_CHUNK):
        try:
            chunk = list(operations[start : start + BULK_CHUNK])
            matched += collection.bulk_write(chunk, ordered=False).matched_count
        except BulkWriteError as error:
            if not only_duplicates(error):
                raise
    return matched


def insert_new(collection: Collection[dict[str, Any]], docs: Sequence[dict[str, Any]]) -> set[int]:
    """Insert what is not there yet; a document already there (same `_id`) is left alone. Returns the
    positions in `docs` of those that were already there."""
    present: set[int] = set()
    step = BULK_CHUNK * 8  # inserts do not hold a connection per document
    for start in range(0, len(docs), step):
        try:
            collection.insert_many(list(docs[start : start + step]), ordered=False)
        except BulkWriteError as error:
            if not only_duplicates(error):
                raise
            present.update(start + int(e["index"]) for e in (error.details or {}).get("writeErrors", []))
    return present


def is_ferretdb(db: Database) -> bool:
    """Whether the server is FerretDB (its `buildInfo` names its version), whose indexes serve fewer
    filters than MongoDB's: a caller may leave one out that would only cost writes there."""
    return "ferretdbVersion" in db.client.admin.command("buildInfo")


def only_duplicates(error: BulkWriteError) -> bool:
    details = error.details or {}
    return not details.get("writeConcernErrors") and all(
        e.get("code") == DUPLICATE_KEY for e in details.get("writeErrors", [])
    )
