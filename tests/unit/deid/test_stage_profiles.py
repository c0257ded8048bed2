"""The deid stage with versioned profiles: which profile applies, which version is recorded, and a
cached view that reloads only when the configuration changed."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.common.blob_store import LocalBlobStore
from services.common.messages import TransientError
from services.common.topics import Topics
from services.deid.engine import Profile
from services.deid.handler import ProfileLookup, prepare_event
from services.deid.profile_documents import profile_from_document
from services.deid.profile_store import CachedProfiles
from services.proto_gen.imx.v1 import events_pb2
from tests.unit.fake_config_store import Clock, FakeConfigStore

from .builders import KEY, ct_dataset, to_bytes
from .stage_builders import KEEP_PATIENT_NAME, PATIENT_NAME, instance_with_a_previous_name, routed_event

TOPICS = Topics("t.")


class FakeStore(FakeConfigStore[Profile]):
    """The part of ProfileStore the cache uses, counting reads; `old` holds earlier versions by number."""

    def __init__(self, *profiles: Profile) -> None:
        super().__init__(profiles, name=lambda profile: profile.name)
        self.old: dict[tuple[str, int], Profile] = {}

    def get(self, name: str, version: int | None = None) -> Profile | None:
        return self.old.get((name, version or 0))


def _profile(version: int, **doc: object) -> Profile:
    return profile_from_document({"name": "ai", **doc}, version=version)


def test_the_cache_checks_at_most_every_refresh_interval_and_reloads_only_on_change() -> None:
    store, clock = FakeStore(_profile(1)), Clock()
    cache = CachedProfiles(store, refresh_s=2.0, clock=clock)  # type: ignore[arg-type]
    first = cache.current()["ai"]
    store.save(_profile(2, options=["retain-uids"]))
    clock.now += 1.0
    assert cache.current()["ai"] is first  # within the interval: no read at all
    clock.now += 1.5
    assert cache.current()["ai"].version == "2"
    lists = store.lists
    clock.now += 5
    cache.current()
    assert store.lists == lists  # config version unchanged: nothing reloaded


def test_unchanged_profiles_keep_their_object_and_compiled_rules_across_reloads() -> None:
    store, clock = FakeStore(_profile(1), Profile("other", version="4")), Clock()
    cache = CachedProfiles(store, refresh_s=0.0, clock=clock)  # type: ignore[arg-type]
    other = cache.current()["other"]
    rules = other.rules
    store.save(_profile(2, options=["retain-uids"]))
    reloaded = cache.current()
    assert reloaded["other"] is other and reloaded["other"].rules is rules
    assert reloaded["ai"].version == "2"


def test_mongo_away_at_the_first_read_is_transient_and_later_keeps_the_profiles_loaded() -> None:
    store, clock = FakeStore(_profile(1)), Clock()
    cache = CachedProfiles(store, refresh_s=2.0, clock=clock)  # type: ignore[arg-type]
    store.down = True
    for _ in range(2):
        with pytest.raises(TransientError):
            cache.current()  # retried, not quarantined as unknown-profile
    store.down = False
    first = cache.current()["ai"]
    store.save(_profile(2, options=["retain-uids"]))
    store.down = True
    clock.now += 2
    assert cache.current()["ai"] is first
    store.down = False
    clock.now += 1
    assert cache.current()["ai"] is first, "the failed check counts: the next one is refresh_s after it"
    clock.now += 1
    assert cache.current()["ai"].version == "2"


def test_lookup_gives_the_current_version_or_an_exact_older_one() -> None:
    store = FakeStore(_profile(2))
    store.old[("ai", 1)] = _profile(1)
    cache = CachedProfiles(store, clock=Clock())  # type: ignore[arg-type]
    assert cache.lookup("ai").version == "2"  # type: ignore[union-attr]
    assert cache.lookup("ai", 2) is cache.lookup("ai")
    assert cache.lookup("ai", 1).version == "1"  # type: ignore[union-attr]
    assert cache.lookup("ai", 7) is None and cache.lookup("nope") is None


def _lookup(*profiles: Profile) -> ProfileLookup:
    current = {p.name: p for p in profiles}
    exact = {(p.name, int(p.version)): p for p in profiles}
    return lambda name, version: exact.get((name, version)) if version else current.get(name)


def test_prepared_records_the_version_of_the_profile_applied(tmp_path: Path) -> None:
    blobs = LocalBlobStore(tmp_path)
    routed = routed_event(blobs, to_bytes(ct_dataset()), "ai")
    [out] = prepare_event(routed, _lookup(_profile(7)), lambda _: KEY, blobs, TOPICS)
    prepared = events_pb2.InstancePrepared.FromString(out.value)
    assert out.topic == TOPICS.prepared
    assert (prepared.profile, prepared.profile_version, prepared.deidentified) == ("ai", 7, True)


def test_an_unknown_profile_or_version_is_quarantined_by_name(tmp_path: Path) -> None:
    blobs = LocalBlobStore(tmp_path)
    for version, detail in [(0, "missing"), (3, "ai v3")]:
        name = "missing" if version == 0 else "ai"
        routed = routed_event(blobs, to_bytes(ct_dataset()), name, version=version)
        [out] = prepare_event(routed, _lookup(_profile(7)), lambda _: KEY, blobs, TOPICS)
        quarantined = events_pb2.Quarantined.FromString(out.value)
        assert (out.topic, quarantined.reason, quarantined.detail) == (TOPICS.quarantine, "unknown-profile", detail)


def test_keeping_a_name_the_profile_removes_elsewhere_is_quarantined_naming_the_tag_only(tmp_path: Path) -> None:
    blobs = LocalBlobStore(tmp_path)
    routed = routed_event(blobs, instance_with_a_previous_name(), "ai")
    [out] = prepare_event(routed, _lookup(_profile(2, overrides=KEEP_PATIENT_NAME)), lambda _: KEY, blobs, TOPICS)
    quarantined = events_pb2.Quarantined.FromString(out.value)
    assert (quarantined.stage, quarantined.reason, quarantined.detail) == ("deid", "phi-leak", "(0010,0010)")
    for token in PATIENT_NAME.split("^"):
        assert token.encode() not in out.value
