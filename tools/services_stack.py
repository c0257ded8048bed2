"""Start the five imx services, and the central gateways for partners registered with an endpoint, as
background processes for `make run` / `make bench`, registered in var/run like Kafka and FerretDB so
`make stop` stops them by PID. Returns when every service's gRPC health check says SERVING."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.control_channel import TOKEN_ENV, TOKEN_FILE_ENV
from services.common.service_access import ServiceAccess, username
from services.common.topics import Topics
from tools.devstack import Layout, Ports, StartupError, ensure_port_free, registered, start_process
from tools.devstack.cli import kafka_admin_config
from tools.devstack.credentials import control_token_file, password, password_file
from tools.devstack.servers import mongo_uri

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class ServicePorts:
    grpc: int
    other: tuple[tuple[str, int], ...] = ()  # (environment variable, port) the service also binds


# glibc returns every freed block over 128 KB to the kernel (mmap, or trimming the heap top) and then
# faults fresh zeroed pages in for the next one. A stage handles ~0.5 MB messages (partner deliveries
# carry the DICOM inline; kafka-python copies each record several times), so by default it spends
# more time in the kernel than in Python: audit ~3.8 s system CPU per 500 bench instances. Keeping
# blocks up to 32 MB in the heap and trimming only beyond 256 MB makes those copies plain memcpy.
# The container image and the chart should set the same two variables.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(32 * 1024 * 1024), "MALLOC_TRIM_THRESHOLD_": str(256 * 1024 * 1024)}

SERVICES: dict[str, ServicePorts] = {
    "ingest": ServicePorts(50051, (("IMX_HTTP_PORT", 8041), ("IMX_DICOM_PORT", 11112))),
    "routing": ServicePorts(50052),
    "deid": ServicePorts(50053),
    "delivery": ServicePorts(50054, (("IMX_HTTP_PORT", 8046),)),
    "audit": ServicePorts(50055, (("IMX_HTTP_PORT", 8045),)),
    # Central gateways (services/gateway/central.py): one worker per partner with an endpoint.
    "gateways": ServicePorts(50056),
}
# Python module each process runs (default: services.<name>).
MODULES = {"gateways": "services.gateway.central"}


def service_env(layout: Layout, ports: Ports, name: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "IMX_KAFKA_BOOTSTRAP": f"127.0.0.1:{ports.kafka}",
            "IMX_KAFKA_PARTNER_BOOTSTRAP": f"127.0.0.1:{ports.kafka_partner}",
            "IMX_MONGO_URI": mongo_uri(ports.mongo),
            "IMX_BLOB_DIR": str(layout.var / "blobs"),
            "IMX_GRPC_PORT": str(SERVICES[name].grpc),
            "IMX_GATEWAY_STATE_DIR": str(layout.var / "gateways"),
            # Each service signs in as its own Kafka user (services/common/service_access.py).
            "IMX_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "IMX_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
            "IMX_KAFKA_SASL_USERNAME": username(name),
            "IMX_KAFKA_SASL_PASSWORD_FILE": str(password_file(layout.var, name)),
            "PYTHONUNBUFFERED": "1",
            **MALLOC_ENV,
        }
    )
    env.update({var: str(port) for var, port in SERVICES[name].other})
    # The control plane's first administrator: var/secrets/control-token, unless the caller names its own.
    env.setdefault("IMX_CONTROL_BOOTSTRAP_TOKEN_FILE", str(control_token_file(layout.var)))
    return env


def use_control_token(layout: Layout) -> None:
    """Let this process (the demo, the benchmark) call the services it started as their bootstrap
    administrator, unless it was given a token of its own."""
    if not os.environ.get(TOKEN_ENV) and not os.environ.get(TOKEN_FILE_ENV):
        os.environ[TOKEN_FILE_ENV] = str(control_token_file(layout.var))


def wait_serving(address: str, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return True
            except grpc.RpcError:
                pass
            time.sleep(0.3)
    return False


def grant_kafka_access(layout: Layout, ports: Ports) -> None:
    """As the broker's admin: the pipeline's topics, and each service's user (its password from var/secrets)
    with exactly its ACLs. Idempotent, so every `make up` runs it."""
    bootstrap, admin = f"127.0.0.1:{ports.kafka}", kafka_admin_config(layout)
    topics = Topics(os.environ.get("IMX_TOPIC_PREFIX", ""))
    passwords = {name: password(layout.var, name) for name in SERVICES}
    ServiceAccess(bootstrap, admin).apply(passwords, topics, int(os.environ.get("IMX_TOPIC_PARTITIONS", "6")))


def start_services(layout: Layout, ports: Ports, timeout_s: float = 90.0) -> None:
    grant_kafka_access(layout, ports)
    use_control_token(layout)
    running = {proc.name for proc in registered(layout.run)}
    to_start = [name for name in SERVICES if name not in running]
    for name in to_start:
        ensure_port_free(SERVICES[name].grpc, f"{name} gRPC")
        for _, port in SERVICES[name].other:
            ensure_port_free(port, f"{name}")
    started = time.monotonic()
    procs = {
        name: start_process(
            name,
            # Under the restarting supervisor: a service that dies is started again.
            [
                sys.executable,
                "-m",
                "tools.devstack.supervise",
                name,
                "--",
                sys.executable,
                "-m",
                MODULES.get(name, f"services.{name}"),
            ],
            layout.log / f"{name}.log",
            env=service_env(layout, ports, name),
            cwd=ROOT,
            run_dir=layout.run,
            endpoint=f"127.0.0.1:{SERVICES[name].grpc}",
        )
        for name in to_start
    }
    for name in SERVICES:
        if not wait_serving(f"127.0.0.1:{SERVICES[name].grpc}", timeout_s):
            tail = procs[name].log_tail() if name in procs else ""
            raise StartupError(f"{name} did not become healthy within {timeout_s:.0f}s\n{tail}")
        state = "already running" if name in running else f"healthy in {time.monotonic() - started:.1f}s"
        print(f"{name:<9} grpc 127.0.0.1:{SERVICES[name].grpc:<6} {state}")


def main() -> int:
    """`make up`: Kafka and FerretDB, then the five services and the central gateways; returns when all
    answer."""
    from tools.devstack import DevstackError
    from tools.devstack.cli import up

    layout, ports = Layout.default(os.environ), Ports.from_env(os.environ)
    try:
        up(layout, ports)
        start_services(layout, ports)
    except DevstackError as error:
        print(error, file=sys.stderr)
        return 2
    print("all running; `make stop` stops them")
    return 0


if __name__ == "__main__":
    sys.exit(main())
