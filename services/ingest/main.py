"""Entry point: `python -m services.ingest` or `imx serve ingest`.

One process serves the three doors into the exchange (C-STORE, STOW-RS and the gRPC control and
admin API). Ingest consumes no topic, so it does not use runtime.run_stage, but keeps its shape:
SIGTERM stops new work, lets in-flight transfers finish, and the process exits 0.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from services.common.control_auth import control_auth
from services.common.control_server import ControlServer
from services.common.http_server import HttpServer, TlsFiles
from services.common.logs import configure_logging
from services.common.runtime import StageControl, install_stop_signals
from services.common.started_objects import freeze_started_objects
from services.common.stats import StageStats
from services.common.telemetry import setup_telemetry
from services.ingest.admin import register_organisation_admin
from services.ingest.file_receipts import prune_receipts_every, receipts_folder
from services.ingest.scp import DicomReceiver
from services.ingest.settings import IngestSettings
from services.ingest.stow import StowContext, create_app, stow_spill_files
from services.ingest.upload_slots import UploadSlots
from services.ingest.wiring import StoppedBeforeStart, open_ingest

log = logging.getLogger(__name__)

SERVICE = "ingest"


@dataclass(frozen=True)
class IngestEndpoints:
    """Where the running service listens (the bound ports, useful when 0 was asked for)."""

    ae_title: str
    dicom_host: str
    dicom_port: int
    http_host: str
    http_port: int
    grpc_port: int


def serve(
    settings: IngestSettings | None = None,
    stop: threading.Event | None = None,
    on_ready: Callable[[IngestEndpoints], None] | None = None,
) -> None:
    """Run until `stop` is set (SIGTERM/SIGINT set it when called on the main thread)."""
    settings = settings or IngestSettings()
    configure_logging(SERVICE, settings.log_level)
    # python-multipart logs parse errors quoting body bytes; ingest reports them itself, without bytes.
    logging.getLogger("python_multipart").setLevel(logging.CRITICAL)
    telemetry = setup_telemetry(SERVICE, settings.otlp_endpoint)
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        install_stop_signals(stop)
    stats = StageStats(service=SERVICE)
    try:
        with open_ingest(settings, stats, stop) as resources:
            receiver = DicomReceiver(resources.acceptance, resources.organisations.calling_aes, settings)
            control = ControlServer(
                SERVICE,
                StageControl(stats),
                host=settings.grpc_host,
                port=settings.grpc_port,
                extra=[register_organisation_admin(resources.organisations, receiver.calling_aets.refresh)],
                auth=control_auth(resources.db, settings.control_bootstrap_token_file),
            )
            stow = StowContext(
                resources.acceptance,
                resources.organisations,
                settings.stow_body_timeout_s,
                UploadSlots(settings.stow_max_uploads_per_org, settings.stow_max_uploads),
                settings.stow_max_instances_per_request,
                stow_spill_files(settings.blob_dir),
            )
            http = HttpServer(
                create_app(stow),
                settings.http_host,
                settings.http_port,
                settings.shutdown_grace_s,
                name="ingest-http",
                header_timeout_s=settings.http_header_timeout_s,
                tls=TlsFiles.of(settings.http_tls_cert_file, settings.http_tls_key_file),
            )
            control.start()
            try:
                receiver.start()
                http.start()
                control.mark_serving()
                endpoints = IngestEndpoints(
                    settings.ae_title, settings.dicom_host, receiver.port, settings.http_host, http.port, control.port
                )
                # pynetdicom's acceptor forces a full collection every 60 passes of its loop.
                freeze_started_objects()
                if settings.receipt_prune_interval_s:
                    threading.Thread(
                        target=prune_receipts_every,
                        args=(
                            receipts_folder(settings.blob_dir),
                            settings.receipt_retention_s,
                            settings.receipt_prune_interval_s,
                            stop,
                        ),
                        name="imx-ingest-receipt-pruning",
                        daemon=True,
                    ).start()
                log.info("service started", extra={"service": SERVICE, "port": control.port})
                if on_ready:
                    on_ready(endpoints)
                stop.wait()
                log.info("stop requested; finishing transfers in flight", extra={"service": SERVICE})
            finally:
                control.mark_not_serving()
                # Both doors close at once; each lets its own transfers in flight finish.
                closing = threading.Thread(target=http.stop, name="imx-ingest-http-stop")
                closing.start()
                receiver.stop(settings.shutdown_grace_s)
                closing.join()
                control.stop()
    except StoppedBeforeStart:
        log.info("service stopped before it started", extra={"service": SERVICE})
    finally:
        telemetry.shutdown()
        log.info("service stopped", extra={"service": SERVICE})
