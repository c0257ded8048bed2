"""Partners sign in to Kafka with their own SCRAM user and can read their own topic, nothing else."""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc
import pytest
from kafka import KafkaConsumer
from kafka.errors import KafkaError
from kafka.structs import TopicPartition
from pymongo.database import Database

from services.common.bus import BusProducer, ensure_topics
from services.common.control_channel import control_channel
from services.common.control_server import ControlServer
from services.common.kafka_access import PartnerAccess, sasl_client_config
from services.common.messages import OutgoingMessage
from services.common.runtime import StageControl
from services.common.stats import StageStats
from services.common.stores.partners import Partner, PartnerStore
from services.common.topics import Topics
from services.delivery.partners import PartnerSignIn, register_partner_admin
from services.proto_gen.imx.v1 import admin_pb2, admin_pb2_grpc
from tests.control_tokens import admin_auth

pytestmark = pytest.mark.integration


def _consumer(
    partner_bootstrap: str, username: str, password: str, group: str | None = None, bootstrap_timeout_ms: int = 20_000
) -> KafkaConsumer:
    return KafkaConsumer(
        bootstrap_servers=partner_bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        request_timeout_ms=8000,
        bootstrap_timeout_ms=bootstrap_timeout_ms,  # a refused sign-in surfaces as a bootstrap timeout
        **sasl_client_config(username, password),
    )


def _read(consumer: KafkaConsumer, topic: str, seconds: float) -> list[bytes]:
    consumer.subscribe([topic])
    values: list[bytes] = []
    deadline = time.monotonic() + seconds
    while not values and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=500).values():
            values.extend(r.value for r in records)
    return values


def _signs_in(partner_bootstrap: str, username: str, password: str, patience_ms: int) -> bool:
    """Whether the broker lets this user in; a refusal shows as no bootstrap within `patience_ms`."""
    try:
        consumer = _consumer(partner_bootstrap, username, password, bootstrap_timeout_ms=patience_ms)
    except KafkaError:
        return False
    try:
        consumer.topics()
    except KafkaError:
        return False
    finally:
        consumer.close()
    return True


def _refused(partner_bootstrap: str, username: str, password: str) -> bool:
    return not _signs_in(partner_bootstrap, username, password, patience_ms=4000)


def _admitted(partner_bootstrap: str, username: str, password: str) -> bool:
    return _signs_in(partner_bootstrap, username, password, patience_ms=20_000)  # generous on a busy machine


def test_a_partner_reads_its_own_topic_and_cannot_see_anyone_elses(
    kafka_bootstrap: str, kafka_partner_bootstrap: str, unique_name: str
) -> None:
    mine, theirs = f"{unique_name}.partner.a", f"{unique_name}.partner.b"
    ensure_topics(kafka_bootstrap, [mine, theirs], partitions=1)
    producer = BusProducer(kafka_bootstrap)
    producer.publish([OutgoingMessage(mine, b"for a", b"k"), OutgoingMessage(theirs, b"for b", b"k")])
    producer.close()
    access = PartnerAccess(kafka_bootstrap)
    partner = f"{unique_name}-a"
    credentials = access.grant(partner, mine)

    consumer = _consumer(
        kafka_partner_bootstrap, credentials.username, credentials.password, group=f"{credentials.group_prefix}reader"
    )
    try:
        assert _read(consumer, mine, 20) == [b"for a"]
        consumer.commit()  # offsets in its own group: allowed
        assert theirs not in consumer.topics(), "another partner's topic is not even listed"
    finally:
        consumer.close()
    snooper = _consumer(kafka_partner_bootstrap, credentials.username, credentials.password)
    try:
        snooper.assign([TopicPartition(theirs, 0)])
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            assert not snooper.poll(timeout_ms=500), "records of another partner's topic were returned"
    finally:
        snooper.close()

    assert _refused(kafka_partner_bootstrap, credentials.username, "wrong-password")
    assert len(access.acls_of(partner)) == 3
    access.revoke(partner)
    assert access.acls_of(partner) == [], "revoking deletes the partner's ACLs too"
    assert _refused(kafka_partner_bootstrap, credentials.username, credentials.password)


@pytest.fixture
def partner_admin(
    kafka_bootstrap: str, kafka_partner_bootstrap: str, db: Database, unique_name: str
) -> Iterator[tuple[admin_pb2_grpc.PartnerAdminStub, Topics]]:
    topics = Topics(f"{unique_name}.")
    sign_in = PartnerSignIn(PartnerAccess(kafka_bootstrap), kafka_partner_bootstrap)

    def create_topic(partner_id: str) -> None:
        ensure_topics(kafka_bootstrap, [topics.partner(partner_id)], partitions=1)

    registration = register_partner_admin(PartnerStore(db), topics, create_topic, sign_in)
    server = ControlServer(
        "delivery", StageControl(StageStats("delivery")), port=0, extra=[registration], auth=admin_auth()
    )
    server.start()
    channel = control_channel(f"127.0.0.1:{server.port}")
    try:
        yield admin_pb2_grpc.PartnerAdminStub(channel), topics
    finally:
        channel.close()
        server.stop(0)


def test_adding_resetting_and_removing_a_partner_issues_and_revokes_its_sign_in(
    partner_admin: tuple[admin_pb2_grpc.PartnerAdminStub, Topics], kafka_bootstrap: str, kafka_partner_bootstrap: str
) -> None:
    admin, topics = partner_admin
    added = admin.AddPartner(admin_pb2.AddPartnerRequest(partner=admin_pb2.Partner(partner_id="lab-one")), timeout=30)
    access = added.kafka_access
    assert (access.bootstrap, access.username, access.group_prefix) == (kafka_partner_bootstrap, "lab-one", "lab-one.")
    assert access.mechanism == "SCRAM-SHA-512" and len(access.password) >= 32
    producer = BusProducer(kafka_bootstrap)
    producer.publish([OutgoingMessage(topics.partner("lab-one"), b"delivered", b"k")])
    producer.close()
    consumer = _consumer(access.bootstrap, access.username, access.password, group="lab-one.test")
    try:
        assert _read(consumer, topics.partner("lab-one"), 20) == [b"delivered"]
    finally:
        consumer.close()

    reset = admin.ResetPartnerPassword(admin_pb2.ResetPartnerPasswordRequest(partner_id="lab-one"), timeout=30)
    assert reset.kafka_access.password != access.password
    assert _refused(access.bootstrap, access.username, access.password), "the old password stops working"
    assert _admitted(access.bootstrap, access.username, reset.kafka_access.password)

    admin.RemovePartner(admin_pb2.RemovePartnerRequest(partner_id="lab-one"), timeout=30)
    assert _refused(access.bootstrap, access.username, reset.kafka_access.password)
    with pytest.raises(grpc.RpcError) as missing:
        admin.ResetPartnerPassword(admin_pb2.ResetPartnerPasswordRequest(partner_id="lab-one"), timeout=30)
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


def test_adding_a_partner_again_updates_it_and_keeps_its_credentials(
    partner_admin: tuple[admin_pb2_grpc.PartnerAdminStub, Topics], db: Database
) -> None:
    """Each AddPartner issued a new password and DICOMweb key: re-running `imx partners add` to change a
    name locked the partner's running gateway out."""
    admin, _topics = partner_admin
    first = admin.AddPartner(admin_pb2.AddPartnerRequest(partner=admin_pb2.Partner(partner_id="lab-two")), timeout=30)
    again = admin.AddPartner(
        admin_pb2.AddPartnerRequest(partner=admin_pb2.Partner(partner_id="lab-two", name="Lab Two")), timeout=30
    )
    assert again.updated and not first.updated
    assert again.partner.name == "Lab Two"
    assert not again.HasField("kafka_access") and again.dicomweb_key == ""
    access = first.kafka_access
    assert _admitted(access.bootstrap, access.username, access.password), "the first password still works"
    assert PartnerStore(db).partner_for_key(first.dicomweb_key) == "lab-two", "and the first key"
    admin.RemovePartner(admin_pb2.RemovePartnerRequest(partner_id="lab-two"), timeout=30)


def test_adding_again_a_partner_whose_first_add_stopped_issues_its_credentials(
    partner_admin: tuple[admin_pb2_grpc.PartnerAdminStub, Topics], db: Database
) -> None:
    """Saved, but stopped before its credentials (its sign-in could not be issued, say): adding it again
    said its password and key were "kept" when it had none."""
    admin, _topics = partner_admin
    PartnerStore(db).add(Partner("lab-three"))  # as a first add leaves it when it stops there
    again = admin.AddPartner(admin_pb2.AddPartnerRequest(partner=admin_pb2.Partner(partner_id="lab-three")), timeout=30)
    assert not again.updated and again.dicomweb_key and again.kafka_access.password
    assert PartnerStore(db).partner_for_key(again.dicomweb_key) == "lab-three"
    admin.RemovePartner(admin_pb2.RemovePartnerRequest(partner_id="lab-three"), timeout=30)


def test_an_id_that_already_names_a_kafka_user_is_refused_and_that_user_left_alone(
    partner_admin: tuple[admin_pb2_grpc.PartnerAdminStub, Topics],
    kafka_bootstrap: str,
    kafka_partner_bootstrap: str,
    unique_name: str,
) -> None:
    """A partner id is its Kafka user: an id naming one made outside imx (another deployment's service, an
    operator's admin) replaced that user's password and gave the partner its ACLs."""
    admin, _topics = partner_admin
    theirs = PartnerAccess(kafka_bootstrap).grant(unique_name, f"{unique_name}.elsewhere")  # not a partner here
    try:
        with pytest.raises(grpc.RpcError) as refused:
            admin.AddPartner(admin_pb2.AddPartnerRequest(partner=admin_pb2.Partner(partner_id=unique_name)), timeout=30)
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "already has a user" in (refused.value.details() or "")
        assert _admitted(kafka_partner_bootstrap, theirs.username, theirs.password), "its password is unchanged"
        listed = admin.ListPartners(admin_pb2.ListPartnersRequest(), timeout=30).partners
        assert unique_name not in {p.partner_id for p in listed}, "nothing saved"
    finally:
        PartnerAccess(kafka_bootstrap).revoke(unique_name)


@pytest.mark.parametrize("reserved", ["imx-delivery", "imx-central-gateway", "admin"])
def test_the_systems_own_kafka_users_and_groups_are_not_partner_ids(
    partner_admin: tuple[admin_pb2_grpc.PartnerAdminStub, Topics], kafka_bootstrap: str, reserved: str
) -> None:
    admin, _topics = partner_admin
    with pytest.raises(grpc.RpcError) as refused:
        admin.AddPartner(admin_pb2.AddPartnerRequest(partner=admin_pb2.Partner(partner_id=reserved)), timeout=30)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
