"""Process settings of the ingest service (environment variables IMX_...)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from services.common.blob_lifecycle import DEFAULT_RETENTION_S
from services.common.settings import ServiceSettings

GIB = 1024**3


class IngestSettings(ServiceSettings):
    """Where ingest listens (DICOM, HTTP, gRPC) and how much it accepts."""

    grpc_port: int = Field(15051, ge=0, le=65535, description="gRPC control port; 0 picks a free port")
    dicom_host: str = Field("127.0.0.1", description="address the C-STORE SCP binds")
    dicom_port: int = Field(11112, ge=0, le=65535, description="C-STORE SCP port; 0 picks a free port")
    ae_title: str = Field("IMX", min_length=1, max_length=16, description="AE title of the C-STORE SCP")
    dicom_max_pdu: int = Field(
        1024 * 1024, ge=0, description="largest PDU the SCP receives (0 = unlimited); larger PDUs are faster"
    )
    dicom_max_associations: int = Field(16, ge=1, description="concurrent DICOM associations")
    dicom_require_called_ae: bool = Field(
        False,
        description="refuse associations that call another AE title than IMX_AE_TITLE (a modality set up for "
        "another SCP); off by default, as many senders call any title",
    )
    dicom_timeout_s: float = Field(
        60.0, gt=0, description="DIMSE and network timeout of the SCP: the longest silence within an association"
    )
    dicom_request_timeout_s: float = Field(
        10.0,
        gt=0,
        description="longest wait for a connection's association request (ARTIM): every open connection holds one "
        "of IMX_DICOM_MAX_ASSOCIATIONS until then",
    )
    dicom_data_set_wait_s: float = Field(
        10.0,
        gt=0,
        description="longest wait for a C-STORE's data set to start; then it is answered as empty (a retransmit "
        "after packet loss can take seconds: 2 s had good instances refused for good)",
    )
    calling_ae_refresh_s: float = Field(
        5.0, gt=0, description="how often the calling AE titles of organisations are re-read from MongoDB"
    )
    http_host: str = Field("127.0.0.1", description="address the STOW-RS HTTP server binds")
    http_port: int = Field(8041, ge=0, le=65535, description="STOW-RS HTTP port; 0 picks a free port")
    stow_body_timeout_s: float = Field(
        30.0, gt=0, description="longest wait for the next bytes of a STOW-RS body; then 408 and the connection closes"
    )
    http_header_timeout_s: float = Field(
        10.0, gt=0, description="longest wait for a request's complete headers; then the connection is closed"
    )
    stow_max_instances_per_request: int = Field(
        10_000, ge=1, description="instances one STOW-RS request may carry; past it the request is answered 413"
    )
    stow_max_uploads_per_org: int = Field(
        8, ge=1, description="STOW-RS uploads one organisation may have open at once; more are refused 429"
    )
    stow_max_uploads: int = Field(
        32,
        ge=1,
        description="STOW-RS uploads open at once across all organisations; more are refused 503 with Retry-After "
        "(each may hold up to twice IMX_MAX_INSTANCE_BYTES in memory)",
    )
    http_tls_cert_file: Path | None = Field(
        None, description="PEM certificate (chain) of the STOW-RS endpoint; with the key file it serves HTTPS only"
    )
    http_tls_key_file: Path | None = Field(None, description="PEM private key of that certificate")
    max_instance_bytes: int = Field(
        1 * GIB, ge=1024, le=2 * GIB, description="largest DICOM instance accepted on any channel"
    )
    max_inflated_bytes: int = Field(
        1 * GIB, ge=1024, le=4 * GIB, description="largest inflated size of a deflated data set; larger is quarantined"
    )
    max_sequence_depth: int = Field(
        32, ge=1, le=1000, description="deepest nesting of sequences accepted; deeper is quarantined"
    )
    max_header_elements: int = Field(
        1_000_000,
        ge=1000,
        le=10_000_000,
        description="most elements a pydicom read of a header may hold (items count thrice; an explicit VR "
        "header in ASCII is read in place: header.InputLimits); more is quarantined",
    )
    max_spilled_inflations: int = Field(
        2,
        ge=1,
        le=64,
        description="deflated data sets inflated onto /tmp at once (each up to IMX_MAX_INFLATED_BYTES); more wait",
    )
    publish_timeout_s: float = Field(
        30.0, gt=0, description="how long to wait for Kafka to acknowledge an event before failing the sender"
    )
    commit_gather_s: float = Field(
        0.01,
        ge=0,
        le=1,
        description="longest a group commit waits for instances already being stored (services/ingest/commit_group.py)",
    )
    shutdown_grace_s: float = Field(30.0, ge=0, description="time given to in-flight transfers on SIGTERM")
    receipt_retention_s: float = Field(
        DEFAULT_RETENTION_S,
        gt=0,
        description="how long an instance is known as published: resent later, it is published again "
        "(default: seven days, the blobs' and the partner topics' retention)",
    )
    receipt_prune_interval_s: float = Field(
        3600.0, ge=0, description="how often receipts past their retention are removed; 0: never"
    )
