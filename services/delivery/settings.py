"""Process settings of the delivery service. Its HTTP settings are read as IMX_DELIVERY_<NAME> first,
then IMX_<NAME> (as audit's are), so one shell can run every service on distinct ports."""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import SettingsConfigDict

from services.common.blob_lifecycle import DEFAULT_RETENTION_S, MIN_RETENTION_S
from services.common.listen_address import host_port
from services.common.settings import ServiceSettings
from services.delivery.retrieval_refs import RetrievalRefs


def _env(name: str) -> AliasChoices:
    return AliasChoices(f"IMX_DELIVERY_{name}", f"IMX_{name}")


class DeliverySettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="IMX_", extra="ignore", populate_by_name=True)
    grpc_port: int = Field(15054, ge=0, le=65535)
    partner_topic_partitions: int = Field(3, ge=1, description="partitions of each partner's topic")
    kafka_partner_bootstrap: str = Field(
        "",
        description="the broker's partner listener (SASL SCRAM) told to partners; empty: imx issues no "
        "Kafka sign-in to partners (the deployment manages partner access itself)",
    )
    kafka_partner_security_protocol: str = Field(
        "SASL_PLAINTEXT", description="what partners use on that listener: SASL_SSL in production"
    )
    http_host: str = Field(
        "127.0.0.1", validation_alias=_env("HTTP_HOST"), description="where the partners' DICOMweb API listens"
    )
    http_port: int = Field(
        8046,
        ge=0,
        le=65535,
        validation_alias=_env("HTTP_PORT"),
        description="the partners' DICOMweb API port (0: any free port)",
    )
    http_tls_cert_file: Path | None = Field(
        None,
        validation_alias=_env("HTTP_TLS_CERT_FILE"),
        description="PEM certificate (chain) of the DICOMweb API; with the key file it serves HTTPS only",
    )
    http_tls_key_file: Path | None = Field(
        None, validation_alias=_env("HTTP_TLS_KEY_FILE"), description="PEM private key of that certificate"
    )
    public_url: str = Field(
        "",
        validation_alias=_env("PUBLIC_URL"),
        description="the DICOMweb base URL partners use, e.g. https://imx.example.org/dicomweb; "
        "empty: http(s)://<http_host>:<http_port>/dicomweb",
    )
    study_quiet_s: float = Field(
        60.0,
        gt=0,
        validation_alias=_env("STUDY_QUIET_S"),
        description="a study with no new instance for this long gets a StudyComplete on the feed",
    )

    blob_retention_s: float = Field(
        DEFAULT_RETENTION_S,
        ge=MIN_RETENTION_S,
        validation_alias=_env("BLOB_RETENTION_S"),
        description="objects no partner is owed are deleted this long after they were last written, at least "
        "a day (an instance in the pipeline is kept by its age alone) (default: seven days, the partner "
        "topics' retention)",
    )
    blob_gc_interval_s: float = Field(
        3600.0, ge=0, validation_alias=_env("BLOB_GC_INTERVAL_S"), description="how often to collect; 0: never"
    )

    record_retention_days: int = Field(
        90,
        ge=0,
        validation_alias=_env("RECORD_RETENTION_DAYS"),
        description="what was recorded of a study delivered to a partner (its DICOMweb index and manifests) is "
        "deleted this many whole days after its last delivery, once every instance of it was stored by the "
        "partner's gateway; 0: kept for ever",
    )
    record_purge_interval_s: float = Field(
        3600.0,
        gt=0,
        validation_alias=_env("RECORD_PURGE_INTERVAL_S"),
        description="how often to look for days to purge",
    )

    retention_check_interval_s: float = Field(
        300.0,
        ge=0,
        validation_alias=_env("RETENTION_CHECK_INTERVAL_S"),
        description="how often partners' unread backlogs are checked against their feeds' retention; 0: never",
    )
    retention_warn_fractions: list[float] = Field(
        [0.5, 0.8],
        validation_alias=_env("RETENTION_WARN_FRACTIONS"),
        description="warn when the oldest unread message has used these fractions of the retention (JSON list)",
    )

    retrieval_key_file: Path | None = Field(
        None,
        validation_alias=_env("RETRIEVAL_KEY_FILE"),
        description=(
            "secret (at least 32 bytes) that signs the retrieval references on partners' feeds, so a partner's"
            " fetch of one is served without a database read; the same file for every delivery replica;"
            " none: references unsigned, every fetch looks the object up"
        ),
    )

    def retrieval_refs(self) -> RetrievalRefs | None:
        """Signer and verifier of retrieval references; None without a key file. A file that cannot be read
        or is too short stops the service at start."""
        return RetrievalRefs.from_file(self.retrieval_key_file) if self.retrieval_key_file else None

    def dicomweb_base(self, bound_port: int | None = None) -> str:
        """The base URL put into each PartnerDelivery's retrieval_url (no trailing slash)."""
        if self.public_url:
            return self.public_url.rstrip("/")
        scheme = "https" if self.http_tls_cert_file else "http"
        return f"{scheme}://{host_port(self.http_host, bound_port or self.http_port)}/dicomweb"
