"""Fixtures every integration test may use; the servers themselves come from tests/conftest.py.

`db`: a MongoDB (FerretDB) database of its own for each test, dropped afterwards."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pymongo import MongoClient
from pymongo.database import Database


@pytest.fixture
def db(mongo_uri: str, unique_name: str) -> Iterator[Database]:
    client: MongoClient = MongoClient(mongo_uri, serverSelectionTimeoutMS=10_000)
    try:
        yield client[unique_name]
    finally:
        client.drop_database(unique_name)
        client.close()
