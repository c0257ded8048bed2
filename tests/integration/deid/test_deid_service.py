"""The deid service as it runs (Kafka, FerretDB, gRPC): profiles managed over ProfileAdmin apply to
the next instances without a restart, and a profile that would release PHI sends the instance to
quarantine with the tag, never the value."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pymongo.database import Database

from services.common.blob_store import LocalBlobStore
from services.common.bus import BusProducer
from services.common.control_channel import control_channel
from services.common.control_server import ControlServer
from services.common.events import event_message
from services.common.stores.partners import Partner, PartnerStore
from services.common.topics import Topics
from services.deid.main import PROFILES_REFRESH_S, serve
from services.deid.settings import DeidSettings
from services.proto_gen.imx.v1 import events_pb2, profiles_pb2, profiles_pb2_grpc
from tests.integration.bus_helpers import read_all
from tests.unit.deid.stage_builders import KEEP_PATIENT_NAME, PATIENT_NAME, instance_with_a_previous_name, routed_event
from tests.waiting import wait_for

PARTNER = "research-a"


@pytest.fixture
def deid(
    kafka_bootstrap: str, mongo_uri: str, db: Database, tmp_path: Path
) -> Iterator[tuple[DeidSettings, ControlServer]]:
    settings = DeidSettings(
        kafka_bootstrap=kafka_bootstrap,
        mongo_uri=mongo_uri,
        mongo_db=db.name,
        blob_dir=tmp_path / "blobs",
        topic_prefix=f"{db.name}.",
        topic_partitions=1,
        grpc_port=0,
    )
    PartnerStore(db).add(Partner(PARTNER))
    stop = threading.Event()
    ready: list[ControlServer] = []
    thread = threading.Thread(target=serve, args=(settings, stop, ready.append), daemon=True)
    thread.start()
    try:
        wait_for(lambda: bool(ready), 60, "the deid service to start", interval_s=0.1)
        yield settings, ready[0]
    finally:
        stop.set()
        thread.join(30)
    assert not thread.is_alive()


def test_profile_changes_apply_without_restart_and_a_phi_leak_is_quarantined_by_tag(
    deid: tuple[DeidSettings, ControlServer],
) -> None:
    settings, server = deid
    topics = Topics(settings.topic_prefix)
    blobs = LocalBlobStore(settings.blob_dir)
    data = instance_with_a_previous_name()
    producer = BusProducer(settings.kafka_bootstrap)
    with control_channel(f"127.0.0.1:{server.port}") as channel:
        admin = profiles_pb2_grpc.ProfileAdminStub(channel)

        def save(**fields: object) -> int:
            request = profiles_pb2.AddProfileRequest(profile=profiles_pb2.DeidProfile(name="keeps-name", **fields))
            return int(admin.AddProfile(request, timeout=10).profile.version)

        def send(event: str) -> None:
            routed = routed_event(blobs, data, "keeps-name", partner_id=PARTNER, event=event)
            producer.publish([event_message(topics.routed, routed, routed.instance.study_instance_uid)])

        try:
            assert save(overrides=KEEP_PATIENT_NAME) == 1
            send("routed-1")
            [record] = read_all(settings.kafka_bootstrap, topics.quarantine, 1, timeout_s=60)
            quarantined = events_pb2.Quarantined.FromString(record.value)
            assert (quarantined.stage, quarantined.reason, quarantined.detail) == ("deid", "phi-leak", "(0010,0010)")
            assert quarantined.partner_id == PARTNER
            for token in PATIENT_NAME.split("^"):
                assert token.encode() not in record.value

            assert save() == 2  # the administrator drops the override; the service is not restarted
            time.sleep(PROFILES_REFRESH_S + 0.5)
            send("routed-2")
            [record] = read_all(settings.kafka_bootstrap, topics.prepared, 1, timeout_s=60)
        finally:
            producer.close()
    prepared = events_pb2.InstancePrepared.FromString(record.value)
    assert (prepared.profile, prepared.profile_version, prepared.deidentified) == ("keeps-name", 2, True)
    released = blobs.get(prepared.blob.sha256)
    for token in PATIENT_NAME.split("^"):
        assert token.encode() not in released
