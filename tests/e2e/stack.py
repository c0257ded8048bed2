"""The five services as real processes against the test session's Kafka and FerretDB, each test module
with its own topic prefix, database and blob store."""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from services.cli.settings import CliSettings
from services.common.control_channel import control_channel
from services.proto_gen.imx.v1 import admin_pb2, admin_pb2_grpc
from tools.demo.drain import progress_snapshot
from tools.devstack import ManagedProcess, free_ports, start_process
from tools.services_stack import wait_serving

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("ingest", "routing", "deid", "delivery", "audit")


@dataclass(frozen=True)
class Stack:
    prefix: str
    db: str
    kafka: str
    kafka_partner: str  # the broker's partner listener (SASL SCRAM)
    mongo: str
    blob_dir: Path
    grpc: dict[str, int]
    ingest_http: int
    ingest_dicom: int
    audit_http: int
    delivery_http: int
    audit_api_key: str = ""  # an analyst's key, issued once the audit service runs
    log_dir: Path | None = None  # the services' logs, for failure messages

    def log_tail(self, service: str, lines: int = 40) -> str:
        """The end of a service's log: what a failing test shows when a service stopped answering."""
        if self.log_dir is None or not (self.log_dir / f"{service}.log").exists():
            return "(no log)"
        return "\n".join((self.log_dir / f"{service}.log").read_text(errors="replace").splitlines()[-lines:])

    @property
    def audit_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.audit_api_key}"}

    @property
    def stow_url(self) -> str:
        return f"http://127.0.0.1:{self.ingest_http}/dicomweb"

    @property
    def dicomweb_url(self) -> str:
        """The partners' DICOMweb API (served by delivery)."""
        return f"http://127.0.0.1:{self.delivery_http}/dicomweb"

    @property
    def audit_url(self) -> str:
        return f"http://127.0.0.1:{self.audit_http}"

    def grpc_address(self, service: str) -> str:
        return f"127.0.0.1:{self.grpc[service]}"

    def total_lag(self) -> int:
        cli = CliSettings(
            routing_grpc=self.grpc_address("routing"),
            deid_grpc=self.grpc_address("deid"),
            delivery_grpc=self.grpc_address("delivery"),
            audit_grpc=self.grpc_address("audit"),
        )
        return progress_snapshot(cli)[0]


@contextmanager
def running_stack(kafka: str, kafka_partner: str, mongo: str, root: Path) -> Iterator[Stack]:
    ports = free_ports(len(SERVICES) + 4)
    tag = uuid.uuid4().hex[:8]
    stack = Stack(
        prefix=f"e2e-{tag}.",
        db=f"e2e-{tag}",
        kafka=kafka,
        kafka_partner=kafka_partner,
        mongo=mongo,
        blob_dir=root / "blobs",
        grpc=dict(zip(SERVICES, ports, strict=False)),
        ingest_http=ports[-4],
        ingest_dicom=ports[-3],
        audit_http=ports[-2],
        delivery_http=ports[-1],
        log_dir=root / "log",
    )
    procs: list[ManagedProcess] = []
    try:
        for service in SERVICES:
            env = {
                **os.environ,
                "IMX_KAFKA_BOOTSTRAP": kafka,
                "IMX_KAFKA_PARTNER_BOOTSTRAP": kafka_partner,
                "IMX_MONGO_URI": mongo,
                "IMX_MONGO_DB": stack.db,
                "IMX_TOPIC_PREFIX": stack.prefix,
                "IMX_TOPIC_PARTITIONS": "3",
                "IMX_BLOB_DIR": str(stack.blob_dir),
                "IMX_GRPC_PORT": str(stack.grpc[service]),
                "IMX_CALLING_AE_REFRESH_S": "1",
                "IMX_AUDIT_SIGNING_KEY_FILE": str(root / "audit-signing-key.pem"),
            }
            if service == "ingest":
                env.update({"IMX_HTTP_PORT": str(stack.ingest_http), "IMX_DICOM_PORT": str(stack.ingest_dicom)})
            if service == "audit":
                env["IMX_HTTP_PORT"] = str(stack.audit_http)
            if service == "delivery":
                env.update(
                    {
                        "IMX_HTTP_PORT": str(stack.delivery_http),
                        "IMX_DELIVERY_STUDY_QUIET_S": "3",
                        "IMX_DELIVERY_RETENTION_CHECK_INTERVAL_S": "2",
                    }
                )
            procs.append(
                start_process(
                    service,
                    [sys.executable, "-m", f"services.{service}"],
                    root / "log" / f"{service}.log",
                    env=env,
                    cwd=ROOT,
                    die_with_parent=True,
                )
            )
        for service, proc in zip(SERVICES, procs, strict=True):
            if not wait_serving(stack.grpc_address(service), 60):
                raise RuntimeError(f"{service} did not become healthy:\n{proc.log_tail()}")
        with control_channel(stack.grpc_address("audit")) as channel:
            request = admin_pb2.AddAnalystRequest(analyst=admin_pb2.Analyst(analyst_id="e2e", name="tests"))
            api_key = admin_pb2_grpc.AnalystAdminStub(channel).AddAnalyst(request, timeout=10).api_key
        yield replace(stack, audit_api_key=api_key)
    finally:
        for proc in reversed(procs):
            proc.stop(timeout=30)
