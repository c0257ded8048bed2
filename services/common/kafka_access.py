"""Partner sign-in to Kafka: one SCRAM-SHA-512 user per partner, allowed to read its own feed only.

Partners connect to the broker's partner listener (SASL); the services use an internal listener that
partners cannot reach. Each partner's user may DESCRIBE and READ its delivery topics (the three
priority lanes of its feed, literal resources) and use consumer groups whose id starts with
"<partner id>." (a prefixed resource), and nothing else: with `allow.everyone.if.no.acl.found=false`,
every other topic is refused to it.

The password is generated here, shown once to the administrator, and never stored by imx: the broker
keeps only its salted SCRAM verifier. A new password for an existing partner (rotation) is the same
upsert with a new secret.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from kafka.admin import (
    ACL,
    ACLFilter,
    ACLOperation,
    ACLPermissionType,
    ACLResourcePatternType,
    KafkaAdminClient,
    ResourcePattern,
    ResourcePatternFilter,
    ResourceType,
    ScramMechanism,
    UserScramCredentialDeletion,
    UserScramCredentialUpsertion,
)
from kafka.errors import NoError

from services.common.topics import Topics

MECHANISM = "SCRAM-SHA-512"


@dataclass(frozen=True)
class PartnerCredentials:
    username: str
    password: str
    group_prefix: str  # consumer group ids the partner may use start with this


def group_prefix(partner_id: str) -> str:
    """Consumer groups a partner may use: "<partner id>." (ids have no dots, so no partner's prefix is
    another's)."""
    return f"{partner_id}."


def partner_acls(partner_id: str, topic: str, receipts_topic: str | None = None) -> list[ACL]:
    """What a partner's user may do: read its feed (`topic`, its routine lane, and the urgent and bulk
    lanes beside it), commit offsets in its own groups, and write its receipts topic (what its gateway
    stored)."""
    principal = f"User:{partner_id}"
    group_pattern = ResourcePattern(ResourceType.GROUP, group_prefix(partner_id), ACLResourcePatternType.PREFIXED)
    allow = ACLPermissionType.ALLOW
    acls = []
    for feed in Topics.lanes_of(topic) if topic.endswith(".v1") else [topic]:
        feed_pattern = ResourcePattern(ResourceType.TOPIC, feed, ACLResourcePatternType.LITERAL)
        acls += [
            ACL(principal, "*", ACLOperation.READ, allow, feed_pattern),
            ACL(principal, "*", ACLOperation.DESCRIBE, allow, feed_pattern),
        ]
    acls.append(ACL(principal, "*", ACLOperation.READ, allow, group_pattern))
    if receipts_topic:
        receipts = ResourcePattern(ResourceType.TOPIC, receipts_topic, ACLResourcePatternType.LITERAL)
        acls += [
            ACL(principal, "*", ACLOperation.WRITE, allow, receipts),
            ACL(principal, "*", ACLOperation.DESCRIBE, allow, receipts),
        ]
    return acls


class PartnerAccess:
    """Grants and revokes partners' Kafka access through the internal listener (as delivery's user, which may
    alter users and ACLs, or the admin)."""

    def __init__(self, bootstrap: str, client_config: Mapping[str, str] | None = None) -> None:
        self._bootstrap = bootstrap
        self._client_config = dict(client_config or {})  # delivery's user: cluster ALTER (service_access)

    @contextmanager
    def _admin(self) -> Iterator[KafkaAdminClient]:
        admin = KafkaAdminClient(
            bootstrap_servers=self._bootstrap, client_id="imx-partner-access", **self._client_config
        )
        try:
            yield admin
        finally:
            admin.close()

    def grant(self, partner_id: str, topic: str, receipts_topic: str | None = None) -> PartnerCredentials:
        """A new password for `partner_id` (replacing any earlier one) and its ACLs (idempotent)."""
        password = secrets.token_urlsafe(24)
        with self._admin() as admin:
            errors = admin.alter_user_scram_credentials(
                [UserScramCredentialUpsertion(partner_id, ScramMechanism.SCRAM_SHA_512, password)]
            )
            _raise_on(errors, "setting the partner's Kafka password")
            result = admin.create_acls(partner_acls(partner_id, topic, receipts_topic))
            failed = result.get("failed") if isinstance(result, dict) else None
            if failed:
                raise RuntimeError(f"creating the partner's Kafka ACLs failed: {failed}")
        return PartnerCredentials(partner_id, password, group_prefix=group_prefix(partner_id))

    def user_exists(self, name: str) -> bool:
        """Whether the broker has SCRAM credentials for `name` (another partner's, a service's, an admin's)."""
        with self._admin() as admin:
            described = admin.describe_user_scram_credentials([name])
        found = described.get(name) or {}
        return found.get("error") is None and bool(found.get("credential_infos"))

    def acls_of(self, partner_id: str) -> list[ACL]:
        """Every ACL naming the partner's user (what `revoke` deletes)."""
        with self._admin() as admin:
            acls, error = admin.describe_acls(_everything_of(partner_id))
        if error is not None and error is not NoError and not isinstance(error, NoError):
            raise RuntimeError(f"listing the partner's Kafka ACLs failed: {error}")
        return list(acls)

    def revoke(self, partner_id: str) -> None:
        """Remove the partner's password and every ACL naming it; a partner without either is fine."""
        with self._admin() as admin:
            admin.delete_acls([_everything_of(partner_id)])
            errors = admin.alter_user_scram_credentials(
                [UserScramCredentialDeletion(partner_id, ScramMechanism.SCRAM_SHA_512)]
            )
            unexpected = {user: e for user, e in (errors or {}).items() if e and "NotFound" not in str(e)}
            _raise_on(unexpected, "removing the partner's Kafka password")


def _everything_of(partner_id: str) -> ACLFilter:
    anything = ResourcePatternFilter(ResourceType.ANY, None, ACLResourcePatternType.ANY)
    return ACLFilter(f"User:{partner_id}", None, ACLOperation.ANY, ACLPermissionType.ANY, anything)


def _raise_on(errors: dict[str, object] | None, what: str) -> None:
    failed = {user: error for user, error in (errors or {}).items() if error}
    if failed:
        raise RuntimeError(f"{what} failed: {failed}")


def sasl_client_config(
    username: str, password: str, security_protocol: str = "SASL_PLAINTEXT", ssl_cafile: Path | None = None
) -> dict[str, str]:
    """kafka-python settings for a partner's consumer on the partner listener (SASL_SSL in production:
    SCRAM never sends the password, but the data itself needs TLS on any network but this one)."""
    return {
        "security_protocol": security_protocol,
        "sasl_mechanism": MECHANISM,
        "sasl_plain_username": username,
        "sasl_plain_password": password,
        **tls_client_config(security_protocol, ssl_cafile),
    }


def tls_client_config(security_protocol: str, ssl_cafile: Path | None) -> dict[str, str]:
    """The CA file that verifies the brokers, for a protocol over TLS (kafka-python otherwise trusts the
    system's CAs only, and a cluster with its own CA, as Strimzi's by default, is refused). A file that is
    not there is said now, not found out as a failed handshake."""
    if ssl_cafile is None or not security_protocol.upper().endswith("SSL"):
        return {}
    if not ssl_cafile.is_file():
        raise ValueError(f"the Kafka CA file {ssl_cafile} does not exist")
    return {"ssl_cafile": str(ssl_cafile)}
