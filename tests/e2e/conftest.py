from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.stack import Stack, running_stack


@pytest.fixture(scope="session")
def stack(
    kafka_bootstrap: str, kafka_partner_bootstrap: str, mongo_uri: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """The five services, started once for all end-to-end tests (each test uses its own org/partner)."""
    with running_stack(kafka_bootstrap, kafka_partner_bootstrap, mongo_uri, tmp_path_factory.mktemp("e2e")) as running:
        yield running
