"""One ingest service per test module, on free ports, with its own topics, database and blob store."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from pymongo import MongoClient

from services.common.stores.organisations import Organisation, OrganisationStore
from services.ingest.settings import IngestSettings
from tests.integration.ingest.helpers import RunningIngest, make_settings, running_ingest

SENDER_AE = "PACS1"


@dataclass(frozen=True)
class SenderOrg:
    org_id: str
    ae_title: str
    api_key: str


@pytest.fixture(scope="module")
def ingest_settings(kafka_bootstrap: str, mongo_uri: str, tmp_path_factory: pytest.TempPathFactory) -> IngestSettings:
    return make_settings(kafka_bootstrap, mongo_uri, tmp_path_factory)


@pytest.fixture(scope="module")
def organisations(ingest_settings: IngestSettings) -> Iterator[OrganisationStore]:
    client: MongoClient = MongoClient(ingest_settings.mongo_uri)
    try:
        yield OrganisationStore(client[ingest_settings.mongo_db])
    finally:
        client.close()


@pytest.fixture(scope="module")
def sender(organisations: OrganisationStore) -> SenderOrg:
    key = organisations.add(Organisation("trust-a", "Trust A", (SENDER_AE,)), issue_api_key=True)
    return SenderOrg("trust-a", SENDER_AE, key)


@pytest.fixture(scope="module")
def ingest(ingest_settings: IngestSettings, sender: SenderOrg) -> Iterator[RunningIngest]:
    with running_ingest(ingest_settings) as running:
        yield running
