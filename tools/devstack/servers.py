"""The servers: Kafka from the Apache jars, FerretDB from the binary infra/setup.sh builds, on the
PostgreSQL cluster of `tools.devstack.postgres`."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

from tools.devstack.postgres import POSTGRES, PostgresCluster, postgres_answers
from tools.devstack.processes import (
    HOST,
    EnvironmentProblem,
    ManagedProcess,
    StartupError,
    await_ready,
    can_connect,
    ensure_port_free,
    start_process,
)

ROOT = Path(__file__).resolve().parents[2]
SETUP_HINT = "run `make setup` (infra/setup.sh) first"
MAX_MESSAGE_BYTES = 16 * 1024 * 1024  # partner topics may carry a DICOM instance inline
KAFKA = "kafka"
FERRETDB = "ferretdb"


def cache_dir() -> Path:
    return Path(os.environ.get("IMX_CACHE", Path.home() / ".cache" / "imx"))


# --- Kafka --------------------------------------------------------------------------------------


def kafka_version() -> str:
    pom = (ROOT / "infra" / "kafka" / "pom.xml").read_text()
    match = re.search(r"<kafka\.version>([^<]+)</kafka\.version>", pom)
    if match is None:
        raise EnvironmentProblem("infra/kafka/pom.xml does not define <kafka.version>")
    return match.group(1)


def kafka_libs() -> Path:
    libs = Path(os.environ.get("IMX_KAFKA_LIBS", cache_dir() / f"kafka-{kafka_version()}" / "libs"))
    if not any(libs.glob("kafka_2.13-*.jar")):
        raise EnvironmentProblem(f"the Kafka jars are not in {libs}; {SETUP_HINT}")
    return libs


def java_binary() -> str:
    java_home = os.environ.get("JAVA_HOME")
    java = str(Path(java_home) / "bin" / "java") if java_home else shutil.which("java")
    if not java or not Path(java).is_file():
        raise EnvironmentProblem(f"java (17 or newer) is needed to run Kafka and was not found; {SETUP_HINT}")
    return java


ADMIN_USER = "admin"  # the broker's own principal and the devstack's super user (SASL PLAIN)
# PLAIN: the admin only (defined below); SCRAM: every service (SHA-256 too: a deployment may choose it)
SERVICE_MECHANISMS = "PLAIN,SCRAM-SHA-512,SCRAM-SHA-256"


def _plain_jaas(admin_password: str) -> str:
    """PLAIN login for the broker's own connections, and the one PLAIN user the broker accepts: the admin.
    Services sign in with SCRAM users the admin creates; nothing is anonymous."""
    return (
        "org.apache.kafka.common.security.plain.PlainLoginModule required "
        f'username="{ADMIN_USER}" password="{admin_password}" user_{ADMIN_USER}="{admin_password}";'
    )


# A devstack broker is small, short-lived and shares two cores with everything else. Measured by thread
# from /proc during `make bench` runs of 300 CT on 2026-12-02: with the JVM's defaults (G1, tiered C2) the
# C2 compiler threads were still taking a third of the broker's CPU ten minutes after its start (104 of
# 307 ticks; request handlers 90); with C1 only and the serial collector the compiler took 5 of 236
# (request handlers 99): 11.8 ms of broker CPU per instance at 17.6/s before, 8.7 ms at 15.1/s after,
# both on a broker already warm (a machine at load ~15: indicative, not exact). Neither flag touches
# what is written or when it is acknowledged (acks=all, the log's flush settings are Kafka's defaults).
#
# C1 alone still waits for 200 calls (2,000 with a back-edge count) before it compiles a method, and a
# fresh broker's request path runs interpreted until then: in the first `make bench` after `make clean`
# async-profiler put the C1 compiler thread at ~20% of the broker's samples and the data-plane threads at
# ~1.5x their warm cost. Lower thresholds compile the hot path after a few calls. Measured 2026-12-04 by
# A/B runs of `make clean && make up && python -m tools.bench --skip-orthanc` (each variant on a fresh
# stack), broker ms per instance (defaults / thresholds below): 10:05-10:10, 1.70 1.35 / 0.93 0.98;
# 13:26-13:34 on a slower machine, 2.00 1.54 2.09 2.34 / 1.23 1.54 1.79 1.79, and the broker's CPU from
# its start to the end of the run (compilation included) 10.2 7.7 10.6 11.3 s / 7.4 7.6 8.8 9.5 s;
# 15:06-15:09, 2.02 1.90 / 1.59 1.85 ms, and from start 10.1 9.0 / 9.6 9.3 s (no gain in that pair).
# Each run on a fresh stack. What is compiled is the same code; nothing about the log or
# acknowledgements changes.
BROKER_JVM_FLAGS = (
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
    "-XX:Tier3InvocationThreshold=10",
    "-XX:Tier3MinInvocationThreshold=5",
    "-XX:Tier3CompileThreshold=100",
    "-XX:Tier3BackEdgeThreshold=2000",
)

# Kafka's defaults are sized for a server: 8 request handlers, 3 network threads per listener, 4 group
# coordinator threads, and the controller writing a no-op record to the metadata log every 0.5 s (KIP-835;
# it only tells brokers the controller is alive, and this one is in the same process). On a devstack's two
# cores each extra thread is another wake-up per request. Measured by broker thread from /proc over
# `make clean && BENCH_ARGS=--skip-orthanc make bench` (start and run), B A A B at load 10-20 on
# 2026-12-03: 6.7 / 10.2 / 9.6 / 8.1 s of broker CPU (request handlers 2.4 / 3.6 / 3.4 / 2.9 s, network
# threads 1.4 / 2.1 / 2.0 / 1.7, group coordinator 0.26 / 0.49 / 0.45 / 0.33, raft I/O 0.07 / 0.47 / 0.44 /
# 0.07); nothing about what is written, or when it is acknowledged, changes.
BROKER_THREADS = {
    "num.io.threads": "2",
    "num.network.threads": "1",
    "group.coordinator.threads": "1",
    "metadata.max.idle.interval.ms": "5000",
}


# Kafka gives every partition's active segment an offset index and a time index, each a sparse file of
# `log.index.size.max.bytes` (10 MiB by default) that it maps and writes entries into. On this machine's kernel
# (6.18, ext4 with large folios) the first write into such a mapping reads the whole sparse file in as zeroed
# pages: 1.5-3.8 ms of system CPU for a 10 MiB file, 0.18-0.38 ms for 1 MiB, 0.01 ms with MADV_RANDOM, which
# Java cannot ask for (`python -m tools.page_cache_probe`, and the write timed alone). `perf record -g` on the
# broker during `BENCH_ARGS=--skip-orthanc make bench` (2026-12-03 22:40): 36% of its samples were that zeroing
# (`filemap_fault` > `page_cache_ra_order` > `ext4_mpage_readpages` > `zero_user_segments`); with 1 MiB it was
# gone from the profile. `make clean && make bench`, A B A B, 22:46-22:53: broker 3.51 / 2.08 / 2.55 / 1.99 ms
# per instance (A: 10 MiB, B: 1 MiB). 1 MiB still holds 87,381 time-index entries, one per 4 KiB of log
# (`log.index.interval.bytes`): a segment rolls at ~340 MiB instead of 1 GiB, no sooner than that. Nothing about
# what is written or when it is acknowledged changes.
BROKER_INDEX_BYTES = 1 << 20


def kafka_config(
    port: int,
    controller_port: int,
    log_dirs: Path,
    partner_port: int | None = None,
    *,
    admin_password: str | None = None,
    open_port: int | None = None,
) -> str:
    """Single-node KRaft with the StandardAuthorizer (`allow.everyone.if.no.acl.found=false`).

    With `admin_password`, the services' listener at `port` is SASL_PLAINTEXT: the admin (super user) signs
    in with PLAIN, each service with its own SCRAM-SHA-512 user whose ACLs allow exactly its topics and
    group (services/common/service_access.py); the controller listener takes the admin only. Without it
    (tools that start a throwaway broker) `port` is unauthenticated and its principal, User:ANONYMOUS, is
    the super user. `open_port` adds such an unauthenticated super-user listener beside the SASL one: test
    sessions only, so the suite creates topics and clients freely while tests of access control use the
    SASL listener. With `partner_port`: partners sign in there (SCRAM) and read only what ACLs grant."""
    secured = admin_password is not None
    internal = "SERVICES" if secured else "PLAINTEXT"
    listeners = [f"{internal}://{HOST}:{port}"]
    protocols = [f"{internal}:{'SASL_PLAINTEXT' if secured else 'PLAINTEXT'}"]
    supers = [f"User:{ADMIN_USER}"] if secured else ["User:ANONYMOUS"]
    if open_port is not None and secured:
        listeners.append(f"OPEN://{HOST}:{open_port}")
        protocols.append("OPEN:PLAINTEXT")
        supers.append("User:ANONYMOUS")
    if partner_port is not None:
        listeners.append(f"PARTNER://{HOST}:{partner_port}")
        protocols.append("PARTNER:SASL_PLAINTEXT")
    advertised = ",".join(listeners)
    listeners.append(f"CONTROLLER://{HOST}:{controller_port}")
    protocols.append(f"CONTROLLER:{'SASL_PLAINTEXT' if secured else 'PLAINTEXT'}")
    scram = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
    security: dict[str, str] = {
        "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        "super.users": ";".join(supers),
        "allow.everyone.if.no.acl.found": "false",
    }
    if partner_port is not None:
        security["listener.name.partner.sasl.enabled.mechanisms"] = "SCRAM-SHA-512"
        security["listener.name.partner.scram-sha-512.sasl.jaas.config"] = scram
    if admin_password is not None:
        security |= {
            "sasl.mechanism.inter.broker.protocol": "PLAIN",
            "sasl.mechanism.controller.protocol": "PLAIN",
            "listener.name.controller.sasl.enabled.mechanisms": "PLAIN",
            "listener.name.controller.plain.sasl.jaas.config": _plain_jaas(admin_password),
            "listener.name.services.sasl.enabled.mechanisms": SERVICE_MECHANISMS,
            "listener.name.services.plain.sasl.jaas.config": _plain_jaas(admin_password),
            "listener.name.services.scram-sha-512.sasl.jaas.config": scram,
            "listener.name.services.scram-sha-256.sasl.jaas.config": scram,
        }
    settings = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@{HOST}:{controller_port}",
        "listeners": ",".join(listeners),
        "advertised.listeners": advertised,
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": internal,
        "listener.security.protocol.map": ",".join(protocols),
        **security,
        "log.dirs": str(log_dirs),
        "num.partitions": "1",
        "auto.create.topics.enable": "true",
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "8",  # the default 50 slows the first consumer group down
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        "message.max.bytes": str(MAX_MESSAGE_BYTES),
        "replica.fetch.max.bytes": str(MAX_MESSAGE_BYTES),
        **BROKER_THREADS,
        "log.index.size.max.bytes": str(BROKER_INDEX_BYTES),
    }
    return "".join(f"{key}={value}\n" for key, value in settings.items())


# Kafka logs to stdout, which start_process appends to the log file; INFO from the server itself,
# only warnings from its chattier corners.
KAFKA_LOG4J2 = """\
status = warn
appender.out.type = Console
appender.out.name = OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = OUT
logger.clients.name = org.apache.kafka.clients
logger.clients.level = WARN
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.state.name = state.change.logger
logger.state.level = WARN
logger.config.name = kafka.server.KafkaConfig
logger.config.level = WARN
"""


def new_cluster_id() -> str:
    """16 random bytes in URL-safe base64, as Kafka's own ids; never starting with '-', which the storage
    tool's argument parser would read as an option (as Kafka's Uuid.randomUuid avoids too)."""
    while True:
        cluster_id = secrets.token_urlsafe(16).rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def start_kafka(
    port: int,
    controller_port: int,
    data_dir: Path,
    log_dir: Path,
    *,
    partner_port: int | None = None,
    admin_password: str | None = None,
    open_port: int | None = None,
    run_dir: Path | None = None,
    die_with_parent: bool = False,
    wait: bool = True,
    timeout: float = 90.0,
) -> ManagedProcess:
    """Start a single-node KRaft broker; the storage in `data_dir` is formatted on first use. With
    `admin_password` the internal listener at `port` needs SASL (see `kafka_config`)."""
    java, libs = java_binary(), kafka_libs()
    ensure_port_free(port, "Kafka", "IMX_KAFKA_PORT")
    ensure_port_free(controller_port, "Kafka controller", "IMX_KAFKA_CONTROLLER_PORT")
    if partner_port is not None:
        ensure_port_free(partner_port, "Kafka partner listener", "IMX_KAFKA_PARTNER_PORT")
    if open_port is not None:
        ensure_port_free(open_port, "Kafka open test listener")
    data_dir.mkdir(parents=True, exist_ok=True)
    properties, log4j = data_dir / "server.properties", data_dir / "log4j2.properties"
    config = kafka_config(
        port, controller_port, data_dir / "log-dirs", partner_port, admin_password=admin_password, open_port=open_port
    )
    write_private(properties, config)  # it holds the admin password
    log4j.write_text(KAFKA_LOG4J2)
    jvm = [java, f"-Dlog4j2.configurationFile={log4j}", "-cp", f"{libs}/*"]
    if not (data_dir / "log-dirs" / "meta.properties").exists():
        cluster_id = new_cluster_id()
        fmt = [*jvm, "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(properties)]
        done = subprocess.run(fmt, capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            raise StartupError(f"formatting Kafka storage failed:\n{done.stdout}{done.stderr}")
    argv = [jvm[0], "-Xmx512m", *BROKER_JVM_FLAGS, "-Djava.awt.headless=true", *jvm[1:], "kafka.Kafka"]
    proc = start_process(
        KAFKA,
        [*argv, str(properties)],
        log_dir / f"{KAFKA}.log",
        cwd=data_dir,
        run_dir=run_dir,
        endpoint=f"{HOST}:{port}",
        die_with_parent=die_with_parent,
    )
    if wait:
        wait_until_ready(proc, timeout, admin_client_config(admin_password))
    return proc


def write_private(path: Path, text: str) -> None:
    """Write `text` to `path` readable by this user only (0600), also when the file already exists."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)


def admin_client_config(admin_password: str | None) -> dict[str, str]:
    """kafka-python settings of the broker's admin (super user); empty for an unauthenticated broker."""
    if admin_password is None:
        return {}
    return {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "PLAIN",
        "sasl_plain_username": ADMIN_USER,
        "sasl_plain_password": admin_password,
    }


def kafka_answers(bootstrap: str, client_config: Mapping[str, str] | None = None) -> bool:
    """True when the broker serves metadata (a TCP accept alone comes too early)."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    if not can_connect(int(bootstrap.rsplit(":", 1)[1])):
        return False
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=bootstrap, bootstrap_timeout_ms=5000, request_timeout_ms=5000, **(client_config or {})
        )
    except KafkaError:
        return False
    try:
        admin.list_topics()
        return True
    except KafkaError:
        return False
    finally:
        admin.close()


# --- FerretDB -----------------------------------------------------------------------------------


def ferretdb_binary() -> Path:
    configured = os.environ.get("IMX_FERRETDB_BIN")
    candidates = [Path(configured)] if configured else [cache_dir() / "bin" / "ferretdb"]
    on_path = shutil.which("ferretdb")
    if on_path and not configured:
        candidates.append(Path(on_path))
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise EnvironmentProblem(f"the FerretDB binary was not found at {candidates[0]}; {SETUP_HINT}")


def mongo_uri(port: int) -> str:
    return f"mongodb://{HOST}:{port}/"


# FerretDB 1.24 runs each statement of an update command on a pooled PostgreSQL connection while the
# command holds another: with pgx's default pool, eight clients sending 60-statement bulk updates at
# once deadlocked FerretDB until the clients timed out (measured here; the whole pipeline froze when a
# delivery batch reached ~50). A pool far larger than any batch moves that point out of reach; the
# stores also split bulk writes (services/common/mongo.py BULK_CHUNK).
FERRETDB_POOL = 400
# Go's collector starts a cycle each time the heap doubles (GOGC=100); FerretDB's live heap is small and
# every command allocates its documents afresh, so the devstack's FerretDB spent ~13% of its CPU
# collecting (perf, `make bench`). A cycle at five times the live heap costs a few tens of MB more.
FERRETDB_GOGC = "400"


def start_ferretdb(
    port: int,
    data_dir: Path,
    log_dir: Path,
    postgres: PostgresCluster,
    *,
    run_dir: Path | None = None,
    die_with_parent: bool = False,
    wait: bool = True,
    timeout: float = 30.0,
) -> ManagedProcess:
    """Start FerretDB on its PostgreSQL handler, with no debug/metrics listener and no telemetry.

    `postgres` must be running by the time FerretDB is asked to be ready: FerretDB connects on the
    first command, and its `ping` does connect, so readiness means both answer. The password goes
    in PGPASSWORD, which FerretDB's driver (pgx) reads, so that it is not on a command line.
    """
    binary = ferretdb_binary()
    ensure_port_free(port, "FerretDB", "IMX_MONGO_PORT")
    data_dir.mkdir(parents=True, exist_ok=True)
    argv = [
        str(binary),
        "--handler=postgresql",
        f"--postgresql-url={postgres.url}?pool_max_conns={FERRETDB_POOL}",
        f"--state-dir={data_dir}",
        f"--listen-addr={HOST}:{port}",
        "--debug-addr=-",
        "--telemetry=disable",
        "--log-level=error",  # WARN logs a full dump for every unsupported command
    ]
    proc = start_process(
        FERRETDB,
        argv,
        log_dir / f"{FERRETDB}.log",
        env={**postgres.client_env(), "GOGC": FERRETDB_GOGC},
        cwd=data_dir,
        run_dir=run_dir,
        endpoint=mongo_uri(port),
        die_with_parent=die_with_parent,
    )
    if wait:
        wait_until_ready(proc, timeout)
    return proc


def mongo_answers(uri: str) -> bool:
    from pymongo import MongoClient
    from pymongo.errors import PyMongoError

    client: MongoClient[dict[str, object]] = MongoClient(uri, serverSelectionTimeoutMS=1000)
    try:
        client.admin.command("ping")
        return True
    except PyMongoError:
        return False
    finally:
        client.close()


# --- readiness ----------------------------------------------------------------------------------


def answers(proc: ManagedProcess, kafka_client: Mapping[str, str] | None = None) -> bool:
    if proc.name == KAFKA:
        return kafka_answers(proc.endpoint, kafka_client)
    if proc.name == POSTGRES:
        return postgres_answers(proc)
    if proc.name == FERRETDB:
        return mongo_answers(proc.endpoint)
    return proc.alive()


def wait_until_ready(proc: ManagedProcess, timeout: float, kafka_client: Mapping[str, str] | None = None) -> None:
    """Block until `proc` answers (Kafka: to `kafka_client`, its admin's settings); on a crash or timeout
    stop it and raise with its log tail."""
    await_ready(proc, lambda p: answers(p, kafka_client), timeout)
