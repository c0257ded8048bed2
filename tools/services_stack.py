"""Start the five imx services, and the central gateways for partners registered with an endpoint, as
background processes for `make run` / `make bench`, registered in var/run like Kafka and FerretDB so
`make stop` stops them by PID. Returns when every service's gRPC health check says SERVING.

IMX_DEVSTACK_REPLICAS (e.g. `ingest=2,routing=2,deid=2,delivery=2`) starts N replicas of a stage, each
under its own supervisor, registered as `<name>` (the first) and `<name>-2`, `<name>-3`...; replica k
binds each of the service's ports + 100·(k-1) (routing-2: gRPC 15152; ingest-2: DICOM 11212, STOW-RS
8141). Replicas of a stage share its consumer group, so Kafka splits the input topic's partitions
between them; a stage asked for more replicas than its input topic has partitions is refused."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.control_channel import TOKEN_ENV, TOKEN_FILE_ENV
from services.common.service_access import ServiceAccess, username
from services.common.settings import DEAD_LETTER_RETENTION_DAYS, retention_ms
from services.common.topics import Topics
from services.ingest.settings import IngestSettings
from tools.devstack import (
    STOP_PATIENCE_S,
    EnvironmentProblem,
    Layout,
    Ports,
    StartupError,
    ensure_port_free,
    registered,
    start_process,
)
from tools.devstack.cli import kafka_admin_config
from tools.devstack.credentials import control_token_file, password, password_file, retrieval_key_file
from tools.devstack.servers import mongo_uri

ROOT = Path(__file__).resolve().parent.parent

INGEST_STOP_MARGIN_S = 15.0  # after ingest's grace: its teardown (the chart gives its pod as much)


@dataclass(frozen=True)
class ServicePorts:
    grpc: int
    other: tuple[tuple[str, int], ...] = ()  # (environment variable, port) the service also binds


# glibc returns every freed block over 128 KB to the kernel (mmap, or trimming the heap top) and then
# faults fresh zeroed pages in for the next one. A stage handles ~0.5 MB messages (partner deliveries
# carry the DICOM inline; kafka-python copies each record several times), so by default it spends
# more time in the kernel than in Python: audit ~3.8 s system CPU per 500 bench instances. Keeping
# blocks up to 32 MB in the heap and trimming only beyond 256 MB makes those copies plain memcpy.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(32 * 1024 * 1024), "MALLOC_TRIM_THRESHOLD_": str(256 * 1024 * 1024)}

# Every service imports numpy (pydicom does), whose OpenBLAS starts a thread per core it sees and spins
# them: ~0.13 s of CPU at each process's start on the 2-core machine, and in a container one idle thread
# per core of the node. imx does no linear algebra (numpy only views and masks pixel buffers).
BLAS_ENV = {"OPENBLAS_NUM_THREADS": "1"}

# What every service process gets, here and in the container image (tests/unit/test_image_env.py).
PROCESS_ENV = {**MALLOC_ENV, **BLAS_ENV}

# The stages behind Kafka run at niceness 5 in the devstack, ingest and the gateways at 0. On one machine
# they all share its cores, and a sender hears its answer only after ingest has stored the instance and
# Kafka acknowledged its event: every moment ingest waits for a core behind deid or audit lengthens
# each association's round trip, while the stages behind Kafka only take bigger batches when they wait
# (their work is not lost, nor is their latency the sender's). Measured with `make bench`
# (README, "Figures"). IMX_DEVSTACK_STAGE_NICENESS changes it (0: all alike).
STAGE_NICENESS_ENV = "IMX_DEVSTACK_STAGE_NICENESS"
BEHIND_KAFKA = ("routing", "deid", "delivery", "audit")
DEFAULT_STAGE_NICENESS = 5

SERVICES: dict[str, ServicePorts] = {
    "ingest": ServicePorts(15051, (("IMX_HTTP_PORT", 8041), ("IMX_DICOM_PORT", 11112))),
    "routing": ServicePorts(15052),
    "deid": ServicePorts(15053),
    "delivery": ServicePorts(15054, (("IMX_HTTP_PORT", 8046),)),
    "audit": ServicePorts(15055, (("IMX_HTTP_PORT", 8045),)),
    # Central gateways (services/gateway/central.py): one worker per partner with an endpoint.
    "gateways": ServicePorts(15056),
}
# Python module each process runs (default: services.<name>).
MODULES = {"gateways": "services.gateway.central"}

REPLICAS_ENV = "IMX_DEVSTACK_REPLICAS"
REPLICA_PORT_STEP = 100  # replica k binds each port of its service + REPLICA_PORT_STEP·(k-1)
# Processes that must stay one, and why (a request for more is refused rather than left to misbehave).
SINGLE_WRITERS = {
    # A second replica's batches would be refused by the log's lease and retried for ever, stalling
    # its partitions (services/audit/tamper_log.py: the tamper-evident log has a single writer).
    "audit": "its tamper-evident log has a single writer (services/audit/tamper_log.py)",
    # Each partner's worker keeps its stored record and incoming files in one state folder.
    "gateways": "each partner's worker keeps its state in one folder (services/gateway/worker.py)",
}


@dataclass(frozen=True)
class Replica:
    """One process of a service: `index` 1 is the service itself, the others `<service>-<index>`."""

    service: str
    index: int
    ports: ServicePorts

    @property
    def name(self) -> str:
        return self.service if self.index == 1 else f"{self.service}-{self.index}"

    @property
    def grpc_address(self) -> str:
        return f"127.0.0.1:{self.ports.grpc}"


def parse_replicas(spec: str) -> dict[str, int]:
    """`routing=2,deid=2` -> {"routing": 2, "deid": 2} (pure); a bad spec raises EnvironmentProblem."""
    counts: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, raw = item.partition("=")
        name = name.strip()
        if name not in SERVICES:
            raise EnvironmentProblem(f"{REPLICAS_ENV}: unknown service {name!r} (one of {', '.join(SERVICES)})")
        if not raw.strip().isdigit() or int(raw) < 1:
            raise EnvironmentProblem(f"{REPLICAS_ENV}: {item!r} needs a whole number of replicas, at least 1")
        if int(raw) > 1 and name in SINGLE_WRITERS:
            raise EnvironmentProblem(f"{REPLICAS_ENV}: {name} runs as one process: {SINGLE_WRITERS[name]}")
        counts[name] = int(raw)
    return counts


def plan_replicas(
    counts: Mapping[str, int], table: Mapping[str, ServicePorts] = SERVICES, step: int = REPLICA_PORT_STEP
) -> list[Replica]:
    """Every process to run, in pipeline order, with its ports (pure)."""
    plan = []
    for name, base in table.items():
        for index in range(1, counts.get(name, 1) + 1):
            shift = step * (index - 1)
            ports = ServicePorts(base.grpc + shift, tuple((var, port + shift) for var, port in base.other))
            plan.append(Replica(name, index, ports))
    return plan


def service_env(
    layout: Layout,
    ports: Ports,
    name: str,
    replica: Replica | None = None,
    base: Mapping[str, str] | None = None,
) -> dict[str, str]:
    replica = replica or Replica(name, 1, SERVICES[name])
    env = dict(os.environ if base is None else base)
    env.update(
        {
            "IMX_KAFKA_BOOTSTRAP": f"127.0.0.1:{ports.kafka}",
            "IMX_KAFKA_PARTNER_BOOTSTRAP": f"127.0.0.1:{ports.kafka_partner}",
            "IMX_MONGO_URI": mongo_uri(ports.mongo),
            "IMX_BLOB_DIR": str(layout.var / "blobs"),
            "IMX_GRPC_PORT": str(replica.ports.grpc),
            "IMX_INSTANCE_ID": replica.name,
            "IMX_GATEWAY_STATE_DIR": str(layout.var / "gateways"),
            # Each service signs in as its own Kafka user (services/common/service_access.py).
            "IMX_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "IMX_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
            "IMX_KAFKA_SASL_USERNAME": username(name),
            "IMX_KAFKA_SASL_PASSWORD_FILE": str(password_file(layout.var, name)),
            "PYTHONUNBUFFERED": "1",
            **PROCESS_ENV,
        }
    )
    env.update({var: str(port) for var, port in replica.ports.other})
    if name == "delivery":  # every replica signs and verifies retrieval references with the same key
        env.setdefault("IMX_DELIVERY_RETRIEVAL_KEY_FILE", str(retrieval_key_file(layout.var)))
    # The control plane's first administrator: var/secrets/control-token, unless the caller names its own.
    env.setdefault("IMX_CONTROL_BOOTSTRAP_TOKEN_FILE", str(control_token_file(layout.var)))
    return env


# What a command run beside the devstack (`imx send`, `imx blobs`) needs to reach its servers.
CONNECTION_VARS = (
    "IMX_KAFKA_BOOTSTRAP",
    "IMX_KAFKA_SECURITY_PROTOCOL",
    "IMX_KAFKA_SASL_MECHANISM",
    "IMX_KAFKA_SASL_USERNAME",
    "IMX_KAFKA_SASL_PASSWORD_FILE",
    "IMX_MONGO_URI",
    "IMX_BLOB_DIR",
)


def connection_env(layout: Layout, ports: Ports, service: str) -> dict[str, str]:
    """`service`'s servers and sign-in on the devstack: its Kafka user (the password by its file's path)."""
    env = service_env(layout, ports, service, base={})
    return {name: env[name] for name in CONNECTION_VARS}


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


def grant_kafka_access(layout: Layout, ports: Ports, env: Mapping[str, str] | None = None) -> None:
    """As the broker's admin: the pipeline's topics, and each service's user (its password from var/secrets)
    with exactly its ACLs. Idempotent, so every `make up` runs it."""
    env = os.environ if env is None else env
    bootstrap, admin = f"127.0.0.1:{ports.kafka}", kafka_admin_config(layout)
    topics = Topics(env.get("IMX_TOPIC_PREFIX", ""))
    passwords = {name: password(layout.var, name) for name in SERVICES}
    days = float(env.get("IMX_DEAD_LETTER_RETENTION_DAYS", DEAD_LETTER_RETENTION_DAYS))
    ServiceAccess(bootstrap, admin).apply(
        passwords, topics, int(env.get("IMX_TOPIC_PARTITIONS", "6")), dead_letter_retention_ms=retention_ms(days)
    )


def stage_inputs(topics: Topics) -> dict[str, list[str]]:
    """The topics whose partitions a stage's replicas share (the fixed ones; delivery also reads the
    partners' receipts, audit every topic)."""
    return {
        "routing": [topics.ingested],
        "deid": topics.routed_lanes,
        "delivery": topics.prepared_lanes,
        "audit": topics.pipeline(),
    }


def check_partitions(layout: Layout, ports: Ports, counts: Mapping[str, int], topics: Topics) -> None:
    """Refuse more replicas of a stage than its input topics have partitions: the extra ones would sit
    idle (topics made by an earlier `make up` keep the partitions they were made with)."""
    wanted = {stage: n for stage, n in counts.items() if n > 1 and stage in stage_inputs(topics)}
    if not wanted:
        return
    from kafka.admin import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=f"127.0.0.1:{ports.kafka}", **kafka_admin_config(layout))
    try:
        names = sorted({topic for stage in wanted for topic in stage_inputs(topics)[stage]})
        partitions = {d.get("name", d.get("topic")): len(d["partitions"]) for d in admin.describe_topics(names)}
    finally:
        admin.close()
    for stage, count in wanted.items():
        fewest = min(partitions.get(topic, 0) for topic in stage_inputs(topics)[stage])
        if count > fewest:
            raise EnvironmentProblem(
                f"{REPLICAS_ENV}: {stage}={count}, but its input topics have {fewest} partitions "
                "(IMX_TOPIC_PARTITIONS when they were made; `make clean` makes them again)"
            )


def start_services(
    layout: Layout,
    ports: Ports,
    timeout_s: float = 90.0,
    *,
    replicas: Sequence[Replica] | None = None,
    env: Mapping[str, str] | None = None,
    die_with_parent: bool = False,
) -> list[Replica]:
    """Start what is not running of `replicas` (default: one of each service, or as IMX_DEVSTACK_REPLICAS
    says), with `env` (default: this process's) as the base of each one's environment. Returns them.
    `die_with_parent` is for tests: the supervisors stop when the process that started them dies."""
    env = os.environ if env is None else env
    counts = parse_replicas(env.get(REPLICAS_ENV, ""))
    plan = list(replicas) if replicas is not None else plan_replicas(counts)
    counts = {name: sum(1 for r in plan if r.service == name) for name in SERVICES}
    grant_kafka_access(layout, ports, env)
    check_partitions(layout, ports, counts, Topics(env.get("IMX_TOPIC_PREFIX", "")))
    use_control_token(layout)
    running = {proc.name for proc in registered(layout.run)}
    to_start = [replica for replica in plan if replica.name not in running]
    for replica in to_start:
        ensure_port_free(replica.ports.grpc, f"{replica.name} gRPC")
        for _, port in replica.ports.other:
            ensure_port_free(port, replica.name)
    niceness = {replica.name: niceness_for(replica.service, env) for replica in to_start}  # refused before a start
    environments = {replica.name: service_env(layout, ports, replica.service, replica, env) for replica in to_start}
    started = time.monotonic()
    procs = {
        replica.name: start_process(
            replica.name,
            # Under the restarting supervisor: a service that dies is started again.
            [
                sys.executable,
                "-m",
                "tools.devstack.supervise",
                replica.name,
                "--nice",
                str(niceness[replica.name]),
                "--",
                sys.executable,
                "-m",
                MODULES.get(replica.service, f"services.{replica.service}"),
            ],
            layout.log / f"{replica.name}.log",
            env=environments[replica.name],
            cwd=ROOT,
            run_dir=layout.run,
            endpoint=replica.grpc_address,
            die_with_parent=die_with_parent,
            stop_patience_s=stop_patience_for(replica.service, environments[replica.name]),
        )
        for replica in to_start
    }
    for replica in plan:
        if not wait_serving(replica.grpc_address, timeout_s):
            tail = procs[replica.name].log_tail() if replica.name in procs else ""
            raise StartupError(f"{replica.name} did not become healthy within {timeout_s:.0f}s\n{tail}")
        state = "already running" if replica.name in running else f"healthy in {time.monotonic() - started:.1f}s"
        print(f"{replica.name:<11} grpc {replica.grpc_address:<16} {state}")
    return plan


def niceness_for(service: str, env: Mapping[str, str]) -> int:
    """The niceness a service of the devstack runs at (pure); refuses a value nice(2) would not take."""
    if service not in BEHIND_KAFKA:
        return 0
    raw = env.get(STAGE_NICENESS_ENV, "").strip()
    if not raw:
        return DEFAULT_STAGE_NICENESS
    if not raw.isdigit() or int(raw) > 19:
        raise EnvironmentProblem(f"{STAGE_NICENESS_ENV}={raw!r} is not a niceness from 0 to 19")
    return int(raw)


def stop_patience_for(service: str, env: Mapping[str, str]) -> float:
    """How long `make stop` waits for a service before it kills it (pure): ingest's grace for transfers
    in flight (IMX_SHUTDOWN_GRACE_S) and 15 s more, as the chart gives ingest's pod; 30 s for the others.
    A grace ingest itself would refuse keeps the default (ingest then does not start)."""
    default = IngestSettings.model_fields["shutdown_grace_s"].default
    if service != "ingest":
        return STOP_PATIENCE_S
    try:
        grace = float(env.get("IMX_SHUTDOWN_GRACE_S", default))
    except ValueError:
        grace = default
    return max(grace, 0.0) + INGEST_STOP_MARGIN_S


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
