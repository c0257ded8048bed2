"""Entry point of the audit service: the consumer (every imx topic → MongoDB), the analysts' HTTP API
and the gRPC Control/health server, in one process. SIGTERM finishes the batch in flight, then exits."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from services.audit.access_log import MongoAccessLog
from services.audit.admin import register_analyst_admin, register_control_token_admin
from services.audit.analysts import AnalystStore, CachedKeyCheck
from services.audit.api import create_app
from services.audit.consumer import AuditHandler, audit_stage_spec
from services.audit.dead_letters import register_dead_letter_admin
from services.audit.evidence import LoggedWriter, TamperEvidence, access_collection
from services.audit.receipts_watch import ReceiptsWatch
from services.audit.settings import AuditSettings
from services.audit.status import register_studies
from services.audit.store import MongoAuditStore
from services.audit.syslog_forward import forwarder_from_settings
from services.common.bus import BusProducer, Handler
from services.common.control_auth import control_auth
from services.common.control_changes import MongoChangeLog
from services.common.control_server import ControlServer
from services.common.control_tokens import TokenStore
from services.common.http_server import HttpServer, TlsFiles
from services.common.mongo import connect
from services.common.runtime import run_stage
from services.common.service_access import kafka_client_config
from services.common.topics import Topics


@dataclass(frozen=True)
class AuditEndpoints:
    """The bound ports (useful when 0 asked for a free one)."""

    http_port: int
    grpc_port: int


def serve(
    settings: AuditSettings | None = None,
    stop: threading.Event | None = None,
    on_ready: Callable[[AuditEndpoints], None] | None = None,
) -> None:
    """Run until `stop` is set (or SIGTERM/SIGINT when called from the main thread); settings default
    to the environment's."""
    settings = settings or AuditSettings()
    client, db = connect(settings)
    try:
        store = MongoAuditStore(db[settings.audit_collection])
        store.ensure_indexes()
        analysts = AnalystStore(db)
        control_plane = control_auth(db, settings.control_bootstrap_token_file)
        evidence = TamperEvidence(settings, db)
        forwarder = forwarder_from_settings(
            settings.syslog_url, settings.syslog_ca_file, settings.syslog_cert_file, settings.syslog_key_file
        )
        key_check = CachedKeyCheck(analysts).holder if settings.require_api_key else None
        access_log = evidence.access_log(MongoAccessLog(db[access_collection(settings)]))
        app = create_app(store, key_check, access_log, MongoChangeLog(db))
        tls = TlsFiles.of(settings.http_tls_cert_file, settings.http_tls_key_file)
        http = HttpServer(app, settings.http_host, settings.http_port, name="audit-http", tls=tls)
        http.start()
        evidence.start()
        try:
            receipts = ReceiptsWatch(Topics(settings.topic_prefix))

            def build_handler(_producer: BusProducer, topics: Topics) -> Handler:
                sinks = [forwarder] if forwarder is not None else []
                return AuditHandler(LoggedWriter(store, evidence.log), topics, sinks=sinks, watch=receipts.saw)

            def ready(control: ControlServer) -> None:
                if on_ready:
                    on_ready(AuditEndpoints(http_port=http.port, grpc_port=control.port))

            run_stage(
                settings,
                audit_stage_spec(Topics(settings.topic_prefix)),
                build_handler,
                control_plane,
                extra_servicers=[
                    register_analyst_admin(analysts),
                    register_control_token_admin(TokenStore(db), control_plane.credentials),
                    register_studies(store),
                    register_dead_letter_admin(
                        settings.kafka_bootstrap,
                        Topics(settings.topic_prefix).dead_letter,
                        db,
                        kafka_client_config(settings),
                    ),
                    evidence.servicer,
                ],
                stop=stop,
                on_ready=ready,
                on_consumer=lambda consumer: receipts.attach(consumer.subscribed_topics, consumer.look_for_new_topics),
                http_serving=True,
            )
        finally:
            # The API first: a query arriving once the access log's appender has closed would get a 503.
            http.stop()
            evidence.stop()
            if forwarder is not None:
                forwarder.close()
    finally:
        client.close()


def main() -> None:
    serve()
