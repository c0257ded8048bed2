"""`python -m tools.devstack up|stop|status|env [SERVICE]` over the runtime folder var/ (or IMX_VAR_DIR)."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tools.devstack.credentials import ADMIN, password
from tools.devstack.postgres import (
    POSTGRES,
    PostgresCluster,
    install_id_lookups,
    postgres_bin_dir,
    server_account,
    start_postgres,
)
from tools.devstack.processes import (
    DevstackError,
    EnvironmentProblem,
    StartupError,
    ensure_port_free,
    registered,
    stop_all,
)
from tools.devstack.servers import (
    FERRETDB,
    KAFKA,
    ROOT,
    admin_client_config,
    ferretdb_binary,
    java_binary,
    kafka_libs,
    start_ferretdb,
    start_kafka,
    wait_until_ready,
)


@dataclass(frozen=True)
class Ports:
    kafka: int = 19092
    kafka_controller: int = 19093
    kafka_partner: int = 19094
    mongo: int = 27117
    postgres: int = 27118

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Ports:
        defaults = cls()
        return cls(
            kafka=_port_from_env(env, "IMX_KAFKA_PORT", defaults.kafka),
            kafka_controller=_port_from_env(env, "IMX_KAFKA_CONTROLLER_PORT", defaults.kafka_controller),
            kafka_partner=_port_from_env(env, "IMX_KAFKA_PARTNER_PORT", defaults.kafka_partner),
            mongo=_port_from_env(env, "IMX_MONGO_PORT", defaults.mongo),
            postgres=_port_from_env(env, "IMX_POSTGRES_PORT", defaults.postgres),
        )


def _port_from_env(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise EnvironmentProblem(f"{name}={raw!r} is not a TCP port number (1-65535)")
    return int(raw)


@dataclass(frozen=True)
class Layout:
    """Where a local deployment keeps its data, logs (log/<name>.log) and pid files (run/)."""

    var: Path

    @classmethod
    def default(cls, env: Mapping[str, str]) -> Layout:
        return cls(Path(env.get("IMX_VAR_DIR", ROOT / "var")).resolve())

    @property
    def run(self) -> Path:
        return self.var / "run"

    @property
    def log(self) -> Path:
        return self.var / "log"


def kafka_admin_password(layout: Layout) -> str:
    """The broker's admin (super user) password, var/secrets/kafka-admin.password."""
    return password(layout.var, ADMIN)


def kafka_admin_config(layout: Layout) -> dict[str, str]:
    return admin_client_config(kafka_admin_password(layout))


def up(layout: Layout, ports: Ports) -> None:
    running = {proc.name: proc for proc in registered(layout.run)}
    # Check everything before starting anything, so a bad setting leaves nothing half-started.
    if KAFKA not in running:
        java_binary()
        kafka_libs()
    if POSTGRES not in running:
        postgres_bin_dir()
        server_account()
    if FERRETDB not in running:
        ferretdb_binary()
    if KAFKA not in running:
        ensure_port_free(ports.kafka, "Kafka", "IMX_KAFKA_PORT")
        ensure_port_free(ports.kafka_controller, "Kafka controller", "IMX_KAFKA_CONTROLLER_PORT")
        ensure_port_free(ports.kafka_partner, "Kafka partner listener", "IMX_KAFKA_PARTNER_PORT")
    if POSTGRES not in running:
        ensure_port_free(ports.postgres, "PostgreSQL", "IMX_POSTGRES_PORT")
    if FERRETDB not in running:
        ensure_port_free(ports.mongo, "FerretDB", "IMX_MONGO_PORT")
    started = time.monotonic()
    kafka = running.get(KAFKA) or start_kafka(
        ports.kafka,
        ports.kafka_controller,
        layout.var / KAFKA,
        layout.log,
        partner_port=ports.kafka_partner,
        admin_password=kafka_admin_password(layout),
        run_dir=layout.run,
        wait=False,
    )
    postgres = running.get(POSTGRES) or start_postgres(
        ports.postgres, layout.var / POSTGRES, layout.log, run_dir=layout.run, wait=False
    )
    # A cluster left running by an earlier `up` keeps the port it was started with.
    cluster = PostgresCluster(int(postgres.endpoint.rsplit(":", 1)[1]), (layout.var / POSTGRES).resolve())
    ferretdb = running.get(FERRETDB) or start_ferretdb(
        ports.mongo, layout.var / FERRETDB, layout.log, cluster, run_dir=layout.run, wait=False
    )
    procs = [kafka, postgres, ferretdb]
    try:
        for proc in procs:
            wait_until_ready(proc, 90.0, kafka_admin_config(layout))
            if proc is postgres:
                # start_postgres(wait=False) leaves this to us; without it every FerretDB `_id` lookup
                # is a sequential scan that grows with var/ (ID_LOOKUP_SQL). Idempotent when running.
                install_id_lookups(cluster, postgres)
            state = "already running" if proc.name in running else f"ready in {time.monotonic() - started:.1f}s"
            print(f"{proc.name:<9} {proc.endpoint:<28} pid {proc.pid:<8} {state}")
    except StartupError:
        for proc in procs:
            proc.stop(timeout=10.0)
        raise


def status(layout: Layout) -> None:
    procs = registered(layout.run)
    if not procs:
        print(f"nothing running (no live pid files in {layout.run})")
    for proc in procs:
        print(f"{proc.name:<9} {proc.endpoint or '-':<28} pid {proc.pid:<8} log {proc.log_path}")


# After the services (stopped newest first), whatever order the servers were (re)started in: FerretDB
# before the PostgreSQL it writes to, Kafka last.
SERVERS_STOPPED_LAST = (FERRETDB, POSTGRES, KAFKA)


def stop(layout: Layout) -> None:
    procs = stop_all(layout.run, last=SERVERS_STOPPED_LAST)
    for proc in procs:
        forced = f"; still running {proc.stop_patience_s:.0f} s after its stop signal, so killed" if proc.killed else ""
        print(f"stopped {proc.name} (pid {proc.pid}{forced})")
    if not procs:
        print("nothing was running")


def print_env(layout: Layout, ports: Ports, service: str) -> None:
    """`export` lines that let a command in this shell reach the running devstack as `service` does."""
    from tools.services_stack import SERVICES, connection_env  # it builds on this module

    if service not in SERVICES:
        raise EnvironmentProblem(f"no service {service!r} in the devstack; one of {', '.join(SERVICES)}")
    if not any(proc.name == "kafka" for proc in registered(layout.run)):
        raise EnvironmentProblem("the devstack is not running; `make up` starts it")
    for name, value in connection_env(layout, ports, service).items():
        print(f"export {name}={shlex.quote(value)}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.devstack",
        description="Local Kafka and MongoDB-wire server (FerretDB on PostgreSQL) for imx.",
    )
    parser.add_argument("command", choices=["up", "stop", "status", "env"])
    parser.add_argument(
        "service",
        nargs="?",
        default="ingest",
        help="env: whose sign-in to print (default ingest, as `imx send` needs); "
        'use as eval "$(python -m tools.devstack env)"',
    )
    parser.add_argument("--var-dir", type=Path, help="runtime folder (default: IMX_VAR_DIR or var/)")
    args = parser.parse_args(argv)
    layout = Layout(args.var_dir.resolve()) if args.var_dir else Layout.default(os.environ)
    try:
        if args.command == "up":
            up(layout, Ports.from_env(os.environ))
        elif args.command == "stop":
            stop(layout)
        elif args.command == "env":
            print_env(layout, Ports.from_env(os.environ), args.service)
        else:
            status(layout)
    except DevstackError as error:
        print(f"devstack: {error}", file=sys.stderr)
        return error.exit_code
    return 0
