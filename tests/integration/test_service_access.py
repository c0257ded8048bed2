"""The internal listener lets no one in anonymously, and each service's user may do exactly its own work
(services/common/service_access.py), against the session's real broker."""

from __future__ import annotations

import secrets
import time
from pathlib import Path

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.errors import GroupAuthorizationFailedError, KafkaError, TopicAuthorizationFailedError
from kafka.structs import TopicPartition
from typer.testing import CliRunner

from services.cli.main import app
from services.common.bus import BusProducer, ensure_topics
from services.common.dead_letter_blobs import DeadLetterBlobs
from services.common.dead_letter_topic import DeadLetterTopic, IncompleteRead
from services.common.events import event_message
from services.common.messages import IncomingMessage, OutgoingMessage
from services.common.service_access import (
    SERVICES,
    ServiceAccess,
    central_gateway_group,
    kafka_client_config,
    service_acls,
    username,
)
from services.common.settings import ServiceSettings
from services.common.topics import Topics
from services.proto_gen.imx.v1 import events_pb2
from tests.conftest import KafkaInternal
from tests.integration.bus_helpers import stage_consumer
from tools.devstack.processes import free_port


def _signed_in(
    internal: KafkaInternal, service: str, topics: Topics, mechanism: str = "SCRAM-SHA-512"
) -> dict[str, str]:
    """Grant `service` its ACLs for `topics` with a fresh password; its client settings, as a service
    builds them from its environment."""
    password = secrets.token_urlsafe(24)
    ServiceAccess(internal.bootstrap, internal.admin_config).grant(service, password, topics)
    settings = ServiceSettings(
        kafka_bootstrap=internal.bootstrap,
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_mechanism=mechanism,
        kafka_sasl_username=username(service),
        kafka_sasl_password=password,  # type: ignore[arg-type]  # pydantic turns it into a SecretStr
    )
    return kafka_client_config(settings)


@pytest.fixture
def topics(kafka_internal: KafkaInternal, unique_name: str) -> Topics:
    """The pipeline's topics and a partner's feed under this test's prefix, made by the admin."""
    topics = Topics(prefix=f"{unique_name}.")
    names = [*topics.pipeline(), *topics.partner_lanes("acme"), topics.receipts("acme")]
    ensure_topics(kafka_internal.bootstrap, names, partitions=1, client_config=kafka_internal.admin_config)
    return topics


def test_an_anonymous_client_is_refused_on_the_internal_listener(kafka_internal: KafkaInternal) -> None:
    with pytest.raises(KafkaError):
        admin = KafkaAdminClient(
            bootstrap_servers=kafka_internal.bootstrap, bootstrap_timeout_ms=3000, request_timeout_ms=3000
        )
        admin.close()


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-512", "SCRAM-SHA-256"])
def test_a_service_signs_in_with_either_scram_mechanism(
    kafka_internal: KafkaInternal, topics: Topics, mechanism: str
) -> None:
    """The chart offers both (kafka.saslMechanism); the set-up made SHA-512 credentials only, so with
    SHA-256 no service could sign in."""
    config = _signed_in(kafka_internal, "routing", topics, mechanism)
    producer = BusProducer(kafka_internal.bootstrap, client_id="imx-routing", client_config=config)
    try:
        producer.publish([OutgoingMessage(topics.routed_lanes[0], b"event", b"study")])
    finally:
        producer.close()


def test_routing_cannot_write_a_partner_feed(kafka_internal: KafkaInternal, topics: Topics) -> None:
    config = _signed_in(kafka_internal, "routing", topics)
    producer = KafkaProducer(bootstrap_servers=kafka_internal.bootstrap, max_block_ms=5000, **config)
    try:
        with pytest.raises(TopicAuthorizationFailedError):
            producer.send(topics.partner("acme"), b"forged delivery").get(timeout=10)
        with pytest.raises(TopicAuthorizationFailedError):
            producer.send(topics.receipts("acme"), b"forged receipt").get(timeout=10)
    finally:
        producer.close()


def test_routing_cannot_use_another_services_group(kafka_internal: KafkaInternal, topics: Topics) -> None:
    config = _signed_in(kafka_internal, "routing", topics)
    consumer = KafkaConsumer(
        topics.ingested, bootstrap_servers=kafka_internal.bootstrap, group_id=f"{topics.prefix}imx-deid", **config
    )
    try:
        with pytest.raises(GroupAuthorizationFailedError):
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                consumer.poll(timeout_ms=500)
    finally:
        consumer.close(autocommit=False)


def _poll_group(internal: KafkaInternal, config: dict[str, str], topic: str, group: str) -> list[bytes]:
    """Join `group` on `topic` and read until something arrives (20 s); a refused group raises."""
    consumer = KafkaConsumer(
        topic, bootstrap_servers=internal.bootstrap, group_id=group, auto_offset_reset="earliest", **config
    )
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            values = [r.value for batch in consumer.poll(timeout_ms=500).values() for r in batch]
            if values:
                return values
        return []
    finally:
        consumer.close(autocommit=False)


def test_the_gateways_user_reads_a_feed_only_in_its_central_group(
    kafka_internal: KafkaInternal, topics: Topics
) -> None:
    """Central gateways join `imx-central-gateway.<partner>`; a partner's own group, another service's
    or any other is refused to them."""
    admin_producer = BusProducer(kafka_internal.bootstrap, client_config=kafka_internal.admin_config)
    admin_producer.publish([OutgoingMessage(topics.partner("acme"), b"delivery-1", b"study-1")])
    admin_producer.close()
    config = _signed_in(kafka_internal, "gateways", topics)
    feed = topics.partner("acme")
    for foreign in ("acme.gateway", "acme.central-gateway", f"{topics.prefix}imx-delivery", "anything"):
        with pytest.raises(GroupAuthorizationFailedError):
            _poll_group(kafka_internal, config, feed, foreign)
    assert _poll_group(kafka_internal, config, feed, central_gateway_group("acme", topics.prefix)) == [b"delivery-1"]


def test_delivery_reads_the_dead_letters_whose_objects_its_blob_lifecycle_keeps(
    kafka_internal: KafkaInternal, topics: Topics
) -> None:
    letter = events_pb2.InstanceIngested(blob=events_pb2.BlobRef(sha256="c" * 64))
    admin_producer = BusProducer(kafka_internal.bootstrap, client_config=kafka_internal.admin_config)
    admin_producer.publish([event_message(topics.dead_letter, letter, "2.25.1")])
    admin_producer.close()
    for service in ("delivery", "routing"):
        config = _signed_in(kafka_internal, service, topics)
        read = DeadLetterBlobs(DeadLetterTopic(kafka_internal.bootstrap, topics.dead_letter, config), 10)
        if service == "delivery":
            assert read() == {"c" * 64}
        else:
            with pytest.raises(IncompleteRead, match="TopicAuthorizationFailed"):  # they write dead letters only
                read()


def test_no_service_is_granted_every_topic_and_only_delivery_describes_every_group() -> None:
    """`*` grants: none on topics; on groups only delivery's DESCRIBE (its retention watch)."""
    for service in SERVICES:
        wide = [
            (acl.resource_pattern.resource_type.name, acl.operation.name)
            for acl in service_acls(service, Topics())
            if acl.resource_pattern.resource_name == "*"
        ]
        assert wide == ([("GROUP", "DESCRIBE")] if service == "delivery" else []), service


def test_routing_does_its_own_work_with_its_own_credentials(kafka_internal: KafkaInternal, topics: Topics) -> None:
    """Read ingested in its group, write a routed lane, commit: one event through the stage's real shell."""
    config = _signed_in(kafka_internal, "routing", topics)
    # Its start-up step: topics it may not create are someone else's, not an error.
    ensure_topics(kafka_internal.bootstrap, topics.pipeline(), partitions=1, client_config=config)
    admin_producer = BusProducer(kafka_internal.bootstrap, client_config=kafka_internal.admin_config)
    admin_producer.publish([OutgoingMessage(topics.ingested, b"event-1", b"study-1")])
    admin_producer.close()
    group = f"{topics.prefix}imx-routing"
    producer = BusProducer(kafka_internal.bootstrap, client_id="imx-routing", client_config=config)
    consumer = stage_consumer(
        kafka_internal.bootstrap,
        producer,
        [topics.ingested],
        group,
        topics.dead_letter,
        stage="routing",
        client_config=config,
    )

    def route(message: IncomingMessage) -> list[OutgoingMessage]:
        return [OutgoingMessage(topics.routed, message.value, message.key)]

    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            consumer.poll_once(route)
            if committed_and_end_offsets_of(kafka_internal, topics.ingested, group) == ({0: 1}, {0: 1}):
                break
    finally:
        consumer.close()
        producer.close()
    assert committed_and_end_offsets_of(kafka_internal, topics.ingested, group) == ({0: 1}, {0: 1})
    reader = KafkaConsumer(
        bootstrap_servers=kafka_internal.bootstrap, auto_offset_reset="earliest", **kafka_internal.admin_config
    )
    reader.assign([TopicPartition(topics.routed, 0)])
    routed = [r.value for batch in reader.poll(timeout_ms=5000).values() for r in batch]
    reader.close()
    assert routed == [b"event-1"]


def committed_and_end_offsets_of(
    internal: KafkaInternal, topic: str, group: str
) -> tuple[dict[int, int], dict[int, int]]:
    """As the admin: the group's committed offsets and the topic's end offsets (one partition)."""
    consumer = KafkaConsumer(
        bootstrap_servers=internal.bootstrap, group_id=group, enable_auto_commit=False, **internal.admin_config
    )
    try:
        tp = TopicPartition(topic, 0)
        return {0: consumer.committed(tp) or 0}, {0: consumer.end_offsets([tp])[tp]}
    finally:
        consumer.close(autocommit=False)


@pytest.mark.parametrize("service", ["ingest", "routing", "deid", "delivery", "audit", "gateways"])
def test_every_service_has_acls_and_none_may_write_anothers_input(service: str) -> None:
    """Only delivery writes partner feeds; nothing but the gateways (for partners) writes receipts."""
    topics = Topics()
    acls = service_acls(service, topics)
    assert acls
    writes = {acl.resource_pattern.resource_name for acl in acls if acl.operation.name == "WRITE"}
    if service != "delivery":
        assert "imx.partner." not in writes
    if service != "gateways":
        assert "imx.receipts." not in writes


def test_imx_kafka_setup_services_applies_the_declaration_as_the_admin(
    kafka_internal: KafkaInternal, unique_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the compose set-up container and the chart's hook Job run: topics, then each named service's
    user and ACLs from its password file; the service then works with that password and no other."""
    topics = Topics(prefix=f"{unique_name}.")
    passwords = tmp_path / "passwords"
    passwords.mkdir()
    (passwords / "routing").write_text(secrets.token_urlsafe(24) + "\n")
    (passwords / "..data").mkdir()  # what a mounted Secret's folder holds besides the keys
    admin_password = tmp_path / "admin.password"
    admin_password.write_text(kafka_internal.admin_config["sasl_plain_password"])
    for name, value in {
        "IMX_KAFKA_BOOTSTRAP": kafka_internal.bootstrap,
        "IMX_KAFKA_SECURITY_PROTOCOL": kafka_internal.admin_config["security_protocol"],
        "IMX_KAFKA_SASL_MECHANISM": kafka_internal.admin_config["sasl_mechanism"],
        "IMX_KAFKA_SASL_USERNAME": kafka_internal.admin_config["sasl_plain_username"],
        "IMX_KAFKA_SASL_PASSWORD_FILE": str(admin_password),
        "IMX_TOPIC_PREFIX": topics.prefix,
        "IMX_TOPIC_PARTITIONS": "1",
    }.items():
        monkeypatch.setenv(name, value)
    result = CliRunner().invoke(app, ["kafka", "setup-services", "--passwords-dir", str(passwords)])
    assert result.exit_code == 0, result.output
    assert "imx-routing" in result.output
    assert (passwords / "routing").read_text().strip() not in result.output, "never prints a password"

    monkeypatch.undo()  # routing signs in with its own settings, not the admin's

    def producer_for(password: str) -> KafkaProducer:
        return KafkaProducer(
            bootstrap_servers=kafka_internal.bootstrap,
            max_block_ms=5000,
            bootstrap_timeout_ms=5000,
            **kafka_client_config(
                ServiceSettings(
                    kafka_bootstrap=kafka_internal.bootstrap,
                    kafka_security_protocol="SASL_PLAINTEXT",
                    kafka_sasl_username=username("routing"),
                    kafka_sasl_password=password,  # type: ignore[arg-type]
                )
            ),
        )

    producer = producer_for((passwords / "routing").read_text().strip())
    try:
        producer.send(topics.routed, b"routed-1").get(timeout=10)  # the topic exists: the command made it
        with pytest.raises(TopicAuthorizationFailedError):
            producer.send(topics.partner("acme"), b"forged delivery").get(timeout=10)
    finally:
        producer.close()
    with pytest.raises(KafkaError):
        producer_for("not-the-password").close()


def test_imx_kafka_setup_services_refuses_an_unknown_service_or_a_missing_password(tmp_path: Path) -> None:
    unknown = CliRunner().invoke(app, ["kafka", "setup-services", "--passwords-dir", str(tmp_path), "--service", "x"])
    assert unknown.exit_code == 2 and "unknown service x" in unknown.output
    missing = CliRunner().invoke(app, ["kafka", "setup-services", "--passwords-dir", str(tmp_path)])
    assert missing.exit_code == 2 and "no password file" in missing.output


def test_imx_kafka_setup_services_gives_up_on_a_broker_that_never_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It waited for ever ("broker unreachable; waiting to create topics"): a refused admin sign-in looks
    the same, so a deployment's set-up Job hung until its deadline with nothing said."""
    (tmp_path / "routing").write_text("a-password")
    monkeypatch.setenv("IMX_KAFKA_BOOTSTRAP", f"127.0.0.1:{free_port()}")  # nothing listens there
    result = CliRunner().invoke(app, ["kafka", "setup-services", "--passwords-dir", str(tmp_path), "--wait", "1"])
    assert result.exit_code == 1 and "no answer from the broker" in " ".join(result.output.split()), result.output
