"""MongoDB connection from settings (FerretDB locally and in CI, MongoDB in production)."""

from __future__ import annotations

from pymongo import MongoClient
from pymongo.database import Database

from services.common.settings import ServiceSettings


def connect(settings: ServiceSettings) -> tuple[MongoClient, Database]:
    client: MongoClient = MongoClient(
        settings.mongo_uri, serverSelectionTimeoutMS=10_000, connectTimeoutMS=5_000, appname="imx"
    )
    return client, client[settings.mongo_db]
