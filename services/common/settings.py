"""Process settings from environment variables (12-factor), one typed object per service.

Every service subclasses `ServiceSettings`; the entry point builds it once and passes it down.
Nothing here is read at import time.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

DAY_MS = 24 * 3600 * 1000
DEAD_LETTER_RETENTION_DAYS = 30.0
MAX_RETENTION_DAYS = 1_000_000.0  # a finite number: beyond it, 0 (until deleted) says what is meant


def retention_ms(days: float) -> int:
    """A topic's retention.ms for a number of days; 0 days: kept until deleted (-1). A retention under a
    millisecond is one: 0 would let the broker delete every letter at once."""
    return max(1, int(days * DAY_MS)) if days > 0 else -1


class ServiceSettings(BaseSettings):
    """What every imx service needs: where Kafka, MongoDB and the blob store are."""

    model_config = SettingsConfigDict(env_prefix="IMX_", extra="ignore")

    kafka_bootstrap: str = Field("127.0.0.1:19092", description="Kafka bootstrap servers, comma separated")
    mongo_uri: str = Field("mongodb://127.0.0.1:27117/", description="MongoDB (or FerretDB) URI")
    mongo_db: str = Field("imx", description="database holding routes, partners, state and audit")
    blob_dir: Path = Field(Path("var/blobs"), description="root of the local content-addressed blob store")
    topic_prefix: str = Field("", description="prefix for every topic name; tests use it to own their topics")
    topic_partitions: int = Field(6, ge=1, description="partitions for topics the service creates")
    topic_replication_factor: int = Field(
        1, ge=1, le=32, description="copies of each topic the service creates (min.insync.replicas: one fewer)"
    )
    dead_letter_retention_days: float = Field(
        DEAD_LETTER_RETENTION_DAYS,
        ge=0,
        le=MAX_RETENTION_DAYS,
        description="how long the dead-letter topic keeps what no stage could process (accepted instances to "
        "replay), and the blob lifecycle the objects they name; 0: until deleted. Set on the topic when it is "
        "created, and by `imx kafka setup-services` on one that exists",
    )
    grpc_host: str = Field("127.0.0.1", description="address the gRPC control server binds")
    grpc_port: int = Field(0, ge=0, le=65535, description="gRPC control port; 0 picks a free port")
    otlp_endpoint: str = Field("", description="OTLP/gRPC endpoint for traces and metrics; empty = no export")
    log_level: str = Field("INFO", description="log level of the service's structured logs")
    max_batch: int = Field(200, ge=1, description="most events handled between two offset commits")
    stuck_after_s: float = Field(
        300.0,
        gt=0,
        description="a stage whose one record (or every batch) has failed for this long, transiently, is not "
        "ready until it gets through, and says so once in its log",
    )
    instance_id: str = Field(
        "",
        description="the replica's stable name, unique among a stage's replicas (the chart gives the pod's): "
        "its consumer is then a static member of the stage's Kafka group under this id "
        "(services/common/static_membership.py); empty: a dynamic member",
    )
    # Audit and delivery subscribe to partner topics by pattern; to see one created since, kafka-python
    # fetches the metadata of every topic on the broker. An idle pattern consumer on a broker with 3,000
    # other topics (two partitions each) used 3.75-3.85% of a core looking every 5 s, 2.43-2.55% every
    # 30 s, 2.11-2.19% with no other topics (README, Figures). Delivery looks at once when it has just
    # created a partner's topics (services/delivery/main.py PartnerTopics), audit when it records a
    # delivery to a partner whose receipts it is not reading yet (services/audit/receipts_watch.py).
    partner_topic_discovery_s: float = Field(
        30.0,
        ge=1.0,
        le=300.0,
        description="how often audit and delivery look for partner topics created since (each look reads "
        "the metadata of every topic on the broker)",
    )

    # How the service signs in to Kafka's internal listener (services/common/service_access.py). PLAINTEXT
    # only where the listener is unauthenticated (a throwaway test broker); deployments use SASL.
    kafka_security_protocol: str = Field("PLAINTEXT", description="PLAINTEXT, SASL_PLAINTEXT or SASL_SSL")
    kafka_sasl_mechanism: str = Field("SCRAM-SHA-512", description="SASL mechanism of the service's user")
    kafka_sasl_username: str = Field("", description="the service's Kafka user, e.g. imx-routing")
    kafka_sasl_password: SecretStr = Field(SecretStr(""), description="its password (prefer the file)")
    kafka_sasl_password_file: Path | None = Field(None, description="file holding the password (a mounted Secret)")
    kafka_ssl_cafile: Path | None = Field(
        None,
        description="PEM file of the CA(s) that sign the brokers' certificates, for SSL and SASL_SSL (a private "
        "CA, as Strimzi's cluster CA); unset: the system's trusted CAs",
    )
    # The control plane's first administrator (services/common/control_tokens.py): a file holding the
    # bootstrap token or its `sha256:<hex>` digest; further tokens are issued with `imx tokens add`.
    control_bootstrap_token_file: Path | None = Field(
        None, description="file holding the bootstrap administrator's control token (or sha256:<hex> of it)"
    )
