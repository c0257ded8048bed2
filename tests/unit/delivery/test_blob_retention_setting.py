"""Delivery's blob retention: an instance still in the pipeline is owed to no partner yet and kept by its
age alone, so a retention of less than a day is refused at start-up, not found out as lost instances."""

import pytest
from pydantic import ValidationError

from services.delivery.settings import DeliverySettings


def test_a_blob_retention_under_a_day_is_refused_and_a_day_is_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMX_BLOB_RETENTION_S", "3600")
    with pytest.raises(ValidationError, match=r"(?s)BLOB_RETENTION_S.*86400"):
        DeliverySettings()
    monkeypatch.setenv("IMX_BLOB_RETENTION_S", "86400")
    assert DeliverySettings().blob_retention_s == 86400
