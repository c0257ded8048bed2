"""Calling AE titles: refreshed from the store, never an empty (= accept everybody) list."""

from __future__ import annotations

import threading
from collections.abc import Mapping

from services.common.stores.organisations import CallingOrg
from services.ingest.calling_aets import CallingAeTitles, allowed_calling_aets


def test_no_organisation_means_no_caller_is_allowed() -> None:
    [sentinel] = allowed_calling_aets([])
    assert sentinel  # pynetdicom reads [] as "everybody"


def test_allowed_titles_are_the_organisations_titles() -> None:
    assert allowed_calling_aets(["B", "A", "A"]) == ["A", "B"]


def test_refresh_applies_changes_and_keeps_the_last_good_set_on_failure() -> None:
    current: dict[str, CallingOrg] = {"PACS1": CallingOrg("trust-a")}
    applied: list[list[str]] = []
    failing = False

    def load() -> Mapping[str, CallingOrg]:
        if failing:
            raise ConnectionError("mongo down")
        return dict(current)

    titles = CallingAeTitles(load, applied.append, interval_s=60)
    assert titles.refresh()
    assert titles.caller("PACS1 ") == CallingOrg("trust-a") and applied == [["PACS1"]]

    assert titles.refresh()
    assert applied == [["PACS1"]]  # unchanged: pynetdicom is not touched again

    current["CT2"] = CallingOrg("trust-b")
    failing = True
    assert not titles.refresh()
    assert titles.caller("PACS1") == CallingOrg("trust-a") and titles.caller("CT2") is None

    failing = False
    assert titles.refresh()
    assert titles.caller("CT2") == CallingOrg("trust-b") and applied[-1] == ["CT2", "PACS1"]


def test_until_the_first_load_every_caller_associates_and_none_is_known() -> None:
    """Refused at association, "calling AE title not recognized" is a permanent rejection: senders stopped
    for good while MongoDB was away at ingest's start. Their C-STOREs are answered "try again" instead."""
    applied: list[list[str]] = []

    def load() -> Mapping[str, CallingOrg]:
        raise ConnectionError("mongo down")

    titles = CallingAeTitles(load, applied.append, interval_s=60)
    titles.start()
    titles.stop()
    assert applied == [[]] and not titles.loaded
    assert titles.caller("ANYONE") is None


def test_two_refreshes_at_once_apply_the_titles_in_the_order_they_were_read() -> None:
    reads = iter([{"OLD": CallingOrg("trust-a")}, {"NEW": CallingOrg("trust-b")}])
    applied: list[list[str]] = []
    first_read, release = threading.Event(), threading.Event()

    def load() -> Mapping[str, CallingOrg]:
        titles = next(reads)
        if "OLD" in titles:  # the background refresh read before the admin API's change
            first_read.set()
            release.wait(5)
        return titles

    titles = CallingAeTitles(load, applied.append, interval_s=60)
    background = threading.Thread(target=titles.refresh)
    background.start()
    first_read.wait(5)
    admin = threading.Thread(target=titles.refresh)
    admin.start()
    admin.join(0.2)  # the old code let this one apply NEW here, then the background one OLD over it
    release.set()
    background.join(5)
    admin.join(5)
    assert applied[-1] == ["NEW"] and titles.caller("NEW") == CallingOrg("trust-b") and titles.caller("OLD") is None


def test_a_first_load_with_no_organisation_lets_nobody_associate() -> None:
    applied: list[list[str]] = []
    titles = CallingAeTitles(dict, applied.append, interval_s=60)
    titles.start()
    titles.stop()
    assert applied == [[], allowed_calling_aets([])] and titles.loaded
