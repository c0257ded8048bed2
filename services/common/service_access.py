"""What each imx service may do on Kafka, declared in one place, and how a service signs in.

Every service has its own SCRAM-SHA-512 user (`imx-<service>`) on the internal listener; with the
broker's StandardAuthorizer and `allow.everyone.if.no.acl.found=false`, its ACLs below are all it may
do: read its inputs in its own consumer group, write its outputs, create (and describe) the topics it
owns. Nothing else — in particular no service but delivery may write a partner's feed, and none but a
partner (and the central gateways acting for it) may write its receipts. Delivery issues partners'
credentials (services/common/kafka_access.py), so it also holds cluster ALTER: that makes it as
powerful as the admin, and it is the one service to guard as such.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

from kafka.admin import (
    ACL,
    ACLOperation,
    ACLPermissionType,
    ACLResourcePatternType,
    ConfigResource,
    ConfigResourceType,
    KafkaAdminClient,
    ResourcePattern,
    ResourceType,
    ScramMechanism,
    UserScramCredentialUpsertion,
)

from services.common.bus import ensure_topics
from services.common.kafka_access import tls_client_config
from services.common.settings import DEAD_LETTER_RETENTION_DAYS, ServiceSettings, retention_ms
from services.common.topics import Topics

SERVICES = ("ingest", "routing", "deid", "delivery", "audit", "gateways")

LITERAL, PREFIXED = ACLResourcePatternType.LITERAL, ACLResourcePatternType.PREFIXED
Op = ACLOperation


def ensure_pipeline_topics(
    settings: ServiceSettings, topics: Topics, stop: threading.Event | None, client_config: Mapping[str, str]
) -> None:
    """A service's start-up step: the pipeline's topics, as its settings shape them (partitions, copies),
    waiting for a broker that is not up yet until `stop`."""
    ensure_topics(
        settings.kafka_bootstrap,
        topics.pipeline(),
        settings.topic_partitions,
        stop=stop,
        client_config=client_config,
        replication_factor=settings.topic_replication_factor,
        retention_ms={topics.dead_letter: retention_ms(settings.dead_letter_retention_days)},
    )


def kafka_client_config(settings: ServiceSettings) -> dict[str, str]:
    """kafka-python settings every client a service makes gets: how it signs in (nothing for PLAINTEXT)."""
    protocol = settings.kafka_security_protocol.upper()
    tls = tls_client_config(protocol, settings.kafka_ssl_cafile)
    if not protocol.startswith("SASL"):
        return {"security_protocol": protocol, **tls} if protocol != "PLAINTEXT" else {}
    password = settings.kafka_sasl_password.get_secret_value()
    if settings.kafka_sasl_password_file is not None:
        password = settings.kafka_sasl_password_file.read_text().strip()
    if not settings.kafka_sasl_username or not password:
        raise ValueError(f"IMX_KAFKA_SECURITY_PROTOCOL={protocol} needs IMX_KAFKA_SASL_USERNAME and a password")
    return {
        "security_protocol": protocol,
        "sasl_mechanism": settings.kafka_sasl_mechanism,
        "sasl_plain_username": settings.kafka_sasl_username,
        "sasl_plain_password": password,
        **tls,
    }


def username(service: str) -> str:
    return f"imx-{service}"


CENTRAL_GATEWAY_GROUP = "imx-central-gateway."


def central_gateway_group(partner_id: str, topic_prefix: str = "") -> str:
    """The consumer group a central gateway reads a partner's feed in. Not under the partner's own
    "<partner>." prefix (kafka_access.group_prefix): the gateways user may use these groups only."""
    return f"{topic_prefix}{CENTRAL_GATEWAY_GROUP}{partner_id}"


@dataclass(frozen=True)
class Grant:
    """Operations on one resource (a topic, a group, the cluster), literal or by prefix."""

    kind: ResourceType
    name: str
    operations: tuple[ACLOperation, ...]
    pattern: ACLResourcePatternType = LITERAL


def _read(*topics: str, pattern: ACLResourcePatternType = LITERAL) -> list[Grant]:
    return [Grant(ResourceType.TOPIC, t, (Op.READ, Op.DESCRIBE), pattern) for t in topics]


def _write(*topics: str, pattern: ACLResourcePatternType = LITERAL) -> list[Grant]:
    """Writers create the topics they write (CREATE; producers are idempotent: IDEMPOTENT_WRITE is
    implied by WRITE since Kafka 3.0)."""
    return [Grant(ResourceType.TOPIC, t, (Op.WRITE, Op.DESCRIBE, Op.CREATE), pattern) for t in topics]


def _group(name: str, pattern: ACLResourcePatternType = LITERAL) -> Grant:
    return Grant(ResourceType.GROUP, name, (Op.READ, Op.DESCRIBE), pattern)


def service_grants(service: str, topics: Topics) -> list[Grant]:
    """Exactly what `service` may do, from the topics and groups it uses (see each service's README)."""
    p = topics.prefix
    partner_feeds, receipts = f"{p}imx.partner.", f"{p}imx.receipts."
    failures = _write(topics.quarantine, topics.dead_letter)
    if service == "ingest":
        return [*_write(topics.ingested), *failures]
    if service == "routing":
        return [*_read(topics.ingested), _group(f"{p}imx-routing"), *_write(*topics.routed_lanes), *failures]
    if service == "deid":
        return [*_read(*topics.routed_lanes), _group(f"{p}imx-deid"), *_write(*topics.prepared_lanes), *failures]
    if service == "delivery":
        return [
            *_read(*topics.prepared_lanes),
            *_read(receipts, pattern=PREFIXED),
            _group(f"{p}imx-delivery"),
            # The blob lifecycle keeps what dead letters name: it reads them, without a group.
            *_read(topics.dead_letter),
            *_write(partner_feeds, pattern=PREFIXED),
            # It creates each partner's receipts topic; only the partner (and its central gateway) writes it.
            Grant(ResourceType.TOPIC, receipts, (Op.CREATE,), PREFIXED),
            *_write(topics.outcomes, topics.access, topics.alerts),
            *failures,
            # The retention watch reads partners' committed offsets and their feeds' retention. A
            # partner's groups are "<partner>.*" (kafka_access.group_prefix), with no prefix common to
            # all partners, so describing them takes every group; DESCRIBE shows offsets, never data,
            # and the cluster ALTER below could grant delivery anything anyway.
            Grant(ResourceType.TOPIC, partner_feeds, (Op.DESCRIBE_CONFIGS,), PREFIXED),
            Grant(ResourceType.GROUP, "*", (Op.DESCRIBE,)),
            # Partners' SCRAM users and ACLs (kafka_access.PartnerAccess).
            Grant(ResourceType.CLUSTER, "kafka-cluster", (Op.ALTER, Op.DESCRIBE)),
        ]
    if service == "audit":
        pipeline = topics.pipeline()
        return [
            *_read(*pipeline),
            *_read(receipts, pattern=PREFIXED),
            _group(f"{p}imx-audit"),
            # Dead-letter replay publishes a dead letter to the topic it came from: any pipeline topic.
            *[Grant(ResourceType.TOPIC, t, (Op.WRITE,)) for t in pipeline],
        ]
    if service == "gateways":
        # Central gateways read each partner's feed in the group "imx-central-gateway.<partner>"
        # (central_gateway_group) and write its receipts; no partner's own group is theirs to join.
        return [
            *_read(partner_feeds, pattern=PREFIXED),
            _group(f"{p}{CENTRAL_GATEWAY_GROUP}", PREFIXED),
            Grant(ResourceType.TOPIC, receipts, (Op.WRITE, Op.DESCRIBE), PREFIXED),
        ]
    raise ValueError(f"no Kafka access is declared for service {service!r}")


def service_acls(service: str, topics: Topics) -> list[ACL]:
    principal = f"User:{username(service)}"
    return [
        ACL(principal, "*", operation, ACLPermissionType.ALLOW, ResourcePattern(g.kind, g.name, g.pattern))
        for g in service_grants(service, topics)
        for operation in g.operations
    ]


class ServiceAccess:
    """Creates the services' users and ACLs, as the broker's admin (devstack `make up`, a chart Job)."""

    def __init__(self, bootstrap: str, admin_config: Mapping[str, str]) -> None:
        self._bootstrap = bootstrap
        self._config = dict(admin_config)

    @contextmanager
    def _admin(self) -> Iterator[KafkaAdminClient]:
        admin = KafkaAdminClient(bootstrap_servers=self._bootstrap, client_id="imx-service-access", **self._config)
        try:
            yield admin
        finally:
            admin.close()

    def apply(
        self,
        passwords: Mapping[str, str],
        topics: Topics,
        partitions: int | None = None,
        replication_factor: int = 1,
        wait_s: float | None = None,
        dead_letter_retention_ms: int = retention_ms(DEAD_LETTER_RETENTION_DAYS),
    ) -> None:
        """The one set-up step of a deployment (devstack `make up`, `imx kafka setup-services` in the
        compose set-up container and the chart's hook Job): the pipeline's topics when `partitions` is
        given (and the dead letters' retention, on their topic made before too), then each service's user,
        password and ACLs, as declared above. A broker that does not
        answer is waited for up to `wait_s` (None: for ever), then RuntimeError: a refused admin sign-in
        looks the same from kafka-python, and waited for ever, a deployment's set-up hung with no end."""
        unknown = sorted(set(passwords) - set(SERVICES))
        if unknown:
            raise ValueError(f"no Kafka access is declared for {', '.join(unknown)}")
        if partitions is not None:
            created = ensure_topics(
                self._bootstrap,
                topics.pipeline(),
                partitions,
                client_config=self._config,
                replication_factor=replication_factor,
                within_s=wait_s,
                retention_ms={topics.dead_letter: dead_letter_retention_ms},
            )
            if created is None:
                raise RuntimeError(
                    f"no answer from the broker at {self._bootstrap} within {wait_s:g} s: is it up, and are the "
                    "admin's username and password right (a refused sign-in looks the same)?"
                )
            if topics.dead_letter not in created:  # one just created has it already
                self.set_retention({topics.dead_letter: dead_letter_retention_ms})
        for service, password in passwords.items():
            if not password:
                raise ValueError(f"empty Kafka password for {service}")
            self.grant(service, password, topics)

    def set_retention(self, retention: Mapping[str, int]) -> None:
        """Set each existing topic's retention.ms (the dead letters' on a deployment whose topic was made
        before, or with another IMX_DEAD_LETTER_RETENTION_DAYS). RuntimeError naming the topics the
        broker refused: kafka-python returns those in its answer rather than raising."""
        resources = [
            ConfigResource(ConfigResourceType.TOPIC, name, configs={"retention.ms": str(ms)})
            for name, ms in retention.items()
        ]
        with self._admin() as admin:
            # Not checked against the topic's known configs first: that asks a broker which may not know of
            # a topic made a moment ago, and fails with a ValueError (a broker refusal is in the answer).
            answer = admin.alter_configs(resources, incremental=True, raise_on_unknown=False).get("topic", {})
        refused = {name: answer.get(name, "no answer") for name in retention if answer.get(name) != "OK"}
        if refused:
            raise RuntimeError(f"setting retention.ms failed: {refused}")

    def grant(self, service: str, password: str, topics: Topics) -> None:
        """Set the service's password and its ACLs (both idempotent: a second `make up` changes nothing)."""
        with self._admin() as admin:
            # Both SCRAM mechanisms (one request each: the broker refuses a user altered twice in one): the
            # services sign in with the one their settings name (the chart's kafka.saslMechanism); with only
            # SHA-512 made, SCRAM-SHA-256 passed the chart and no service could sign in.
            for mechanism in (ScramMechanism.SCRAM_SHA_512, ScramMechanism.SCRAM_SHA_256):
                errors = admin.alter_user_scram_credentials(
                    [UserScramCredentialUpsertion(username(service), mechanism, password)]
                )
                failed = {user: error for user, error in (errors or {}).items() if error}
                if failed:
                    raise RuntimeError(f"setting {service}'s Kafka password failed: {failed}")
            result = admin.create_acls(service_acls(service, topics))
            if isinstance(result, dict) and result.get("failed"):
                raise RuntimeError(f"creating {service}'s Kafka ACLs failed: {result['failed']}")
