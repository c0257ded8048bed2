"""The caps on STOW-RS uploads open at once: an organisation's own, and the service's (pure)."""

from __future__ import annotations

from contextlib import ExitStack

import pytest

from services.ingest.upload_slots import ORG, SERVICE, UploadSlots


def test_an_organisation_past_its_cap_is_refused_and_others_are_not() -> None:
    slots = UploadSlots(per_org=2)
    with ExitStack() as held:
        assert [held.enter_context(slots.hold("a")) for _ in range(2)] == [None, None]
        with slots.hold("a") as full:
            assert full == ORG
        with slots.hold("b") as full:
            assert full is None
    with slots.hold("a") as full:
        assert full is None, "slots come back when the uploads end"


def test_the_service_past_its_cap_refuses_every_organisation_until_one_ends() -> None:
    slots = UploadSlots(per_org=2, total=3)
    with ExitStack() as held:
        assert [held.enter_context(slots.hold(org)) for org in ("a", "b", "c")] == [None, None, None]
        with slots.hold("d") as full:
            assert full == SERVICE
        with slots.hold("a") as full:
            assert full == SERVICE
    with slots.hold("d") as full:
        assert full is None


def test_a_cap_below_one_is_refused() -> None:
    with pytest.raises(ValueError):
        UploadSlots(per_org=1, total=0)
