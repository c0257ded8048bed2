"""Reading a query's plan from the MongoDB-wire server the tests run against."""

from __future__ import annotations

import json

from pymongo.database import Database


def scans(db: Database, collection: str, query: dict[str, object]) -> bool:
    """Whether the server answers `query` by reading the whole collection: FerretDB's plan (PostgreSQL's)
    says Seq Scan, MongoDB's COLLSCAN."""
    plan = json.dumps(db.command("explain", {"find": collection, "filter": query}), default=str)
    return "Seq Scan" in plan or "COLLSCAN" in plan
