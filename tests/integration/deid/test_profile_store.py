"""Profiles in FerretDB: every change is a new version, old versions stay readable, built-ins are fixed,
and the deid stage's cached view picks changes up without a restart."""

from __future__ import annotations

from pathlib import Path

import pytest
from pymongo.database import Database

from services.common.blob_store import LocalBlobStore
from services.common.topics import Topics
from services.deid.engine import BUILTIN_PROFILES, Option
from services.deid.handler import prepare_event
from services.deid.profile_documents import profile_from_document
from services.deid.profile_store import CachedProfiles, ProfileStore, ProtectedProfile
from services.proto_gen.imx.v1 import events_pb2
from tests.unit.deid.builders import KEY
from tests.unit.deid.stage_builders import KEEP_PATIENT_NAME, instance_with_a_previous_name, routed_event


def _doc(**fields: object) -> dict:
    return {"name": "ai-partner", **fields}


def test_each_change_is_a_new_version_and_old_versions_stay_readable(db: Database) -> None:
    store = ProfileStore(db)
    v1, changed1 = store.add(profile_from_document(_doc(options=["retain-patient-characteristics"])))
    v2, changed2 = store.add(profile_from_document(_doc(options=["retain-uids"], overrides={"(0008,103E)": "K"})))
    assert (v1.version, changed1, v2.version, changed2) == ("1", True, "2", True)
    assert store.get("ai-partner").version == "2"  # type: ignore[union-attr]
    old = store.get("ai-partner", 1)
    assert old is not None and old.options == frozenset({Option.RETAIN_PATIENT_CHARACTERISTICS})
    assert dict(old.overrides) == {}
    assert store.get("ai-partner", 3) is None
    assert store.versions("ai-partner") == [1, 2]


def test_saving_the_same_content_again_changes_nothing(db: Database) -> None:
    store = ProfileStore(db)
    store.add(profile_from_document(_doc(overrides={"(0008,103E)": "K"})))
    before = store.config_version()
    again, changed = store.add(profile_from_document(_doc(overrides={"SeriesDescription": "keep"})))
    assert (again.version, changed, store.config_version()) == ("1", False, before)


def test_removal_keeps_the_versions_and_a_new_profile_under_the_name_continues_the_numbering(db: Database) -> None:
    store = ProfileStore(db)
    store.add(profile_from_document(_doc()))
    store.add(profile_from_document(_doc(options=["retain-uids"])))
    assert store.remove("ai-partner") and not store.remove("ai-partner")
    assert store.get("ai-partner") is None and store.get("ai-partner", 2) is not None
    assert [p.name for p in store.list()] == ["basic", "research"]
    readded, _ = store.add(profile_from_document(_doc()))
    assert readded.version == "3" and store.versions("ai-partner") == [1, 2, 3]


def test_a_late_writer_never_turns_the_current_version_back(db: Database) -> None:
    store = ProfileStore(db)
    store.add(profile_from_document(_doc()))
    # A newer version became current while this writer was between claiming its number and saving.
    db["profiles"].update_one({"_id": "ai-partner"}, {"$set": {"version": 9}})
    late, changed = store.add(profile_from_document(_doc(options=["retain-uids"])))
    assert (late.version, changed) == ("2", True)
    assert store.get("ai-partner").version == "9"  # type: ignore[union-attr]
    assert store.get("ai-partner", 2).options == frozenset({Option.RETAIN_UIDS})  # type: ignore[union-attr]


def test_builtins_always_exist_and_cannot_be_overwritten_or_removed(db: Database) -> None:
    store = ProfileStore(db)
    assert [p.name for p in store.list()] == ["basic", "research"]
    assert store.get("research") is BUILTIN_PROFILES["research"]
    assert store.get("basic", 1) is BUILTIN_PROFILES["basic"] and store.get("basic", 2) is None
    with pytest.raises(ProtectedProfile, match="built-in profile and cannot be overwritten"):
        store.add(profile_from_document({"name": "basic", "options": ["retain-uids"]}))
    with pytest.raises(ProtectedProfile, match="built-in profile and cannot be removed"):
        store.remove("research")
    assert store.get("basic") is BUILTIN_PROFILES["basic"]


def test_the_stage_picks_up_a_changed_profile_without_a_restart(db: Database, tmp_path: Path) -> None:
    store, blobs, topics = ProfileStore(db), LocalBlobStore(tmp_path), Topics("t.")
    cached = CachedProfiles(ProfileStore(db), refresh_s=0.0)  # another replica's view of the same database
    store.add(profile_from_document(_doc(overrides=KEEP_PATIENT_NAME)))
    data = instance_with_a_previous_name()

    def run(event: str) -> tuple[str, bytes]:
        routed = routed_event(blobs, data, "ai-partner", event=event)
        [out] = prepare_event(routed, cached.lookup, lambda _: KEY, blobs, topics)
        return out.topic, out.value

    topic, value = run("e1")
    assert topic == topics.quarantine and events_pb2.Quarantined.FromString(value).reason == "phi-leak"
    store.add(profile_from_document(_doc()))  # the administrator drops the override
    topic, value = run("e2")
    prepared = events_pb2.InstancePrepared.FromString(value)
    assert topic == topics.prepared and (prepared.profile, prepared.profile_version) == ("ai-partner", 2)


def test_an_unreadable_stored_profile_is_skipped_not_fatal(db: Database) -> None:
    store = ProfileStore(db)
    db["profiles"].insert_one({"_id": "hand-made", "name": "hand-made", "version": 1, "options": ["bogus"]})
    assert store.get("hand-made") is None
    assert [p.name for p in store.list()] == ["basic", "research"]
