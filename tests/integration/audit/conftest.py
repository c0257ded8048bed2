"""Fixtures shared by the audit integration tests (modules needing a differently made client define
their own `client`, which pytest prefers to this one)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pymongo import MongoClient


@pytest.fixture
def client(mongo_uri: str, unique_name: str) -> Iterator[MongoClient]:
    """A client of the test's own database, dropped afterwards."""
    client: MongoClient = MongoClient(mongo_uri, serverSelectionTimeoutMS=5000)
    yield client
    client.drop_database(unique_name)
    client.close()
