"""Process settings of the audit service (environment variables; built once by the entry point).

Service-specific variables are read as IMX_AUDIT_<NAME> first, then IMX_<NAME>: one shell can run every
service with distinct ports, while a container of its own can use the short names.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import SettingsConfigDict

from services.common.settings import ServiceSettings


def _env(name: str) -> AliasChoices:
    return AliasChoices(f"IMX_AUDIT_{name}", f"IMX_{name}")


class AuditSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="IMX_", extra="ignore", populate_by_name=True)

    http_host: str = Field("127.0.0.1", validation_alias=_env("HTTP_HOST"), description="address the HTTP API binds")
    http_port: int = Field(
        8045, ge=0, le=65535, validation_alias=_env("HTTP_PORT"), description="HTTP API port; 0 picks a free port"
    )
    http_tls_cert_file: Path | None = Field(
        None,
        validation_alias=_env("HTTP_TLS_CERT_FILE"),
        description="PEM certificate (chain) of the HTTP API; with the key file it serves HTTPS only",
    )
    http_tls_key_file: Path | None = Field(
        None, validation_alias=_env("HTTP_TLS_KEY_FILE"), description="PEM private key of that certificate"
    )
    grpc_port: int = Field(
        15055, ge=0, le=65535, validation_alias=_env("GRPC_PORT"), description="gRPC control port; 0 picks a free port"
    )
    # Audit's cost is mostly per batch, not per record: pages, counters, the journal, the tamper-evident
    # log's chunk, head and lease are ~30 round trips whatever the batch's size. The pipeline stages'
    # 200 events made `make bench` write ~60 batches for 2,000 instances (6 events each) although the
    # broker gathers up to a second per fetch (consumer.py); `make bench-audit` already ran with 2,000.
    max_batch: int = Field(
        2000,
        ge=1,
        validation_alias=_env("MAX_BATCH"),
        description="most events handled between two offset commits (one batch: one write of pages and counters)",
    )
    audit_collection: str = Field(
        "audit_events", validation_alias=_env("COLLECTION"), description="MongoDB collection holding the audit records"
    )
    require_api_key: bool = Field(
        True,
        validation_alias=_env("REQUIRE_API_KEY"),
        description="audit queries need an analyst's API key (`imx analysts add`); false only behind a proxy "
        "that authenticates",
    )

    # Tamper evidence (services/audit/tamper_log.py) and retention (services/audit/retention.py).
    log_collection: str = Field(
        "audit_log", validation_alias=_env("LOG_COLLECTION"), description="MongoDB collection holding the Merkle log"
    )
    signing_key_file: Path = Field(
        Path("var/audit/signing-key.pem"),
        validation_alias=_env("SIGNING_KEY_FILE"),
        description="Ed25519 private key (PKCS#8 PEM) signing the log's tree heads; created 0600 when absent",
    )
    sth_every: int = Field(
        10_000, ge=1, validation_alias=_env("STH_EVERY"), description="sign a tree head at least every N leaves"
    )
    sth_interval_s: float = Field(
        60.0, gt=0, validation_alias=_env("STH_INTERVAL_S"), description="...and every T seconds while it grows"
    )
    log_lease_s: float = Field(
        30.0,
        gt=0,
        validation_alias=_env("LOG_LEASE_S"),
        description="single-writer lease of the log; a crashed writer's successor waits this long",
    )
    retention_days: float | None = Field(
        None,
        gt=0,
        validation_alias=_env("RETENTION_DAYS"),
        description="purge records older than this, after a signed checkpoint; unset: keep everything",
    )
    retention_every_s: float = Field(
        3600.0, gt=0, validation_alias=_env("RETENTION_EVERY_S"), description="how often the purge runs"
    )

    # Forwarding to an audit record repository (services/audit/syslog_forward.py): RFC 5424 over TLS.
    syslog_url: str | None = Field(
        None,
        validation_alias=_env("SYSLOG_URL"),
        description="tls://host[:port] of an audit record repository "
        "(RFC 5425, port 6514 by default); unset: no forwarding",
    )
    syslog_ca_file: Path | None = Field(
        None,
        validation_alias=_env("SYSLOG_CA_FILE"),
        description="CA certificate(s) the repository's certificate must chain to; unset: the system's CAs",
    )
    syslog_cert_file: Path | None = Field(
        None, validation_alias=_env("SYSLOG_CERT_FILE"), description="client certificate (PEM) for mutual TLS"
    )
    syslog_key_file: Path | None = Field(
        None, validation_alias=_env("SYSLOG_KEY_FILE"), description="the client certificate's private key (PEM)"
    )
