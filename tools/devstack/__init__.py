"""Local Kafka (KRaft, single node) and MongoDB-wire server (FerretDB on PostgreSQL 15) for
development, tests and `make run`.

CLI: `python -m tools.devstack up|stop|status`. Runtime data lives under the repo's git-ignored
`var/` (or IMX_VAR_DIR): var/kafka, var/postgres (the cluster, its socket folder and password),
var/ferretdb, var/log/<name>.log, var/run/<name>.pid.
Ports: IMX_KAFKA_PORT (19092), IMX_KAFKA_CONTROLLER_PORT (19093), IMX_KAFKA_PARTNER_PORT (19094, partners
sign in there with SASL SCRAM), IMX_MONGO_PORT (27117), IMX_POSTGRES_PORT (27118).

Every process started here can be registered in a pid file (see `processes`), services included,
so `stop_all` stops a whole local deployment.

Exit codes: 0 ok, 1 a server did not become ready, 2 a problem with the machine or the settings
(port taken, tool missing, bad value in an environment variable).
"""

from tools.devstack.cli import Layout, Ports
from tools.devstack.postgres import PostgresCluster, postgres_bin_dir, start_postgres
from tools.devstack.processes import (
    HOST,
    STOP_PATIENCE_S,
    DevstackError,
    EnvironmentProblem,
    ManagedProcess,
    StartupError,
    ensure_port_free,
    free_port,
    free_ports,
    registered,
    start_process,
    stop_all,
)
from tools.devstack.servers import mongo_uri, start_ferretdb, start_kafka, wait_until_ready

__all__ = [
    "HOST",
    "STOP_PATIENCE_S",
    "DevstackError",
    "EnvironmentProblem",
    "Layout",
    "ManagedProcess",
    "Ports",
    "PostgresCluster",
    "StartupError",
    "ensure_port_free",
    "free_port",
    "free_ports",
    "mongo_uri",
    "postgres_bin_dir",
    "registered",
    "start_ferretdb",
    "start_kafka",
    "start_postgres",
    "start_process",
    "stop_all",
    "wait_until_ready",
]
