"""Fixtures shared by every test.

Real servers are session fixtures and pytest builds a fixture only when a test asks for it, so unit
tests run with no servers at all, and the first integration/e2e test pays the few seconds Kafka and
FerretDB take to start. Under pytest-xdist (`make test`) each worker process is a session of its own,
with its own servers. IMX_TEST_KAFKA (host:port) and IMX_TEST_MONGO (a mongodb:// URI) point the
tests at servers that are already running instead, e.g. the ones `make up` starts.

Tests share those servers, so each test names its own topics, consumer groups and databases with
`unique_name` / `make_name`.
"""

from __future__ import annotations

import os
import secrets
import shutil
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.server_dirs import postgres_home
from tools import devstack
from tools.devstack.servers import admin_client_config

TESTS = Path(__file__).resolve().parent

# The CLI's rich consoles are built when their modules are imported and keep the COLUMNS of that
# moment; in a pytest-xdist worker GNU readline has already exported COLUMNS=80, which wraps the
# tables the CLI tests read. Wide enough for any row, set before any test module imports the CLI; in
# the workers only, so that pytest's own report keeps the terminal's width.
if "PYTEST_XDIST_WORKER" in os.environ:
    os.environ["COLUMNS"] = "250"


def pytest_configure(config: pytest.Config) -> None:
    # kafka-python loads its protocol schemas with deprecated importlib.resources calls.
    for message in ("read_text is deprecated", "open_text is deprecated"):
        config.addinivalue_line("filterwarnings", f"ignore:{message}:DeprecationWarning")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # The folder is the category, so `-m "not integration and not e2e"` needs no decorators.
    for item in items:
        for marker in ("integration", "e2e"):
            if (TESTS / marker) in item.path.parents:
                item.add_marker(marker)


@pytest.fixture(scope="module", autouse=True)
def pynetdicom_receiving_restored() -> Iterator[None]:
    """Ingest's receiver switches pynetdicom, process-wide, to write received data sets to files in its
    own folder (services/ingest/scp.py `receive_to_files`); a later module's SCP would otherwise read an
    empty in-memory copy (the CI failure that had 2e52c02 reverted) or write into a deleted folder.
    Per module, since modules keep one in-process ingest running across their tests."""
    from pynetdicom import _config, dimse_messages

    names = ("NamedTemporaryFile", "create_file_meta", "write_file_meta_info")  # all receive_to_files sets
    saved_switch, saved = _config.STORE_RECV_CHUNKED_DATASET, {name: getattr(dimse_messages, name) for name in names}
    yield
    _config.STORE_RECV_CHUNKED_DATASET = saved_switch
    for name, value in saved.items():
        setattr(dimse_messages, name, value)


@pytest.fixture(scope="session", autouse=True)
def control_token(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One control token for the session (services/common/control_tokens.py): the bootstrap
    administrator of every service the tests start, sent by every client they make
    (services/common/control_channel.py). Tests of the control plane itself issue their own."""
    token = "imx_ctl_test_" + secrets.token_urlsafe(24)
    path = tmp_path_factory.mktemp("control") / "control-token"
    path.write_text(token + "\n")
    saved = {name: os.environ.get(name) for name in ("IMX_CONTROL_TOKEN", "IMX_CONTROL_BOOTSTRAP_TOKEN_FILE")}
    os.environ["IMX_CONTROL_TOKEN"] = token
    os.environ["IMX_CONTROL_BOOTSTRAP_TOKEN_FILE"] = str(path)
    yield token
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """bootstrap.servers of a Kafka broker for this test session: an unauthenticated listener whose
    principal is a super user, so tests create topics and clients freely. The same broker's internal
    listener needs SASL as in a deployment (`kafka_internal`), for the tests of the services' ACLs."""
    external = os.environ.get("IMX_TEST_KAFKA")
    if external:
        yield external
        return
    port, controller_port, partner_port, open_port = devstack.free_ports(4)
    root = tmp_path_factory.mktemp("kafka")
    admin_password = secrets.token_urlsafe(24)
    try:
        proc = devstack.start_kafka(
            port,
            controller_port,
            root / "data",
            root,
            partner_port=partner_port,
            admin_password=admin_password,
            open_port=open_port,
            die_with_parent=True,
        )
    except devstack.DevstackError as error:
        pytest.fail(f"could not start Kafka: {error}", pytrace=False)
    bootstrap = f"127.0.0.1:{open_port}"
    _PARTNER_LISTENERS[bootstrap] = f"127.0.0.1:{partner_port}"
    _INTERNAL_LISTENERS[bootstrap] = KafkaInternal(proc.endpoint, admin_client_config(admin_password))
    try:
        yield bootstrap
    finally:
        proc.stop()


_PARTNER_LISTENERS: dict[str, str] = {}


@dataclass(frozen=True)
class KafkaInternal:
    """The broker's internal listener (SASL, ACLs enforced) and its admin's client settings."""

    bootstrap: str
    admin_config: dict[str, str]


_INTERNAL_LISTENERS: dict[str, KafkaInternal] = {}


@pytest.fixture(scope="session")
def kafka_internal(kafka_bootstrap: str) -> KafkaInternal:
    """The same broker's authenticated internal listener (only when the tests started the broker)."""
    if kafka_bootstrap not in _INTERNAL_LISTENERS:
        pytest.skip("IMX_TEST_KAFKA points at a broker the tests did not start")
    return _INTERNAL_LISTENERS[kafka_bootstrap]


@pytest.fixture(scope="session")
def kafka_partner_bootstrap(kafka_bootstrap: str) -> str:
    """The same broker's partner listener (SASL SCRAM-SHA-512, ACLs enforced)."""
    external = os.environ.get("IMX_TEST_KAFKA_PARTNER")
    if external:
        return external
    if kafka_bootstrap not in _PARTNER_LISTENERS:
        pytest.skip("IMX_TEST_KAFKA is set without IMX_TEST_KAFKA_PARTNER")
    return _PARTNER_LISTENERS[kafka_bootstrap]


@pytest.fixture(scope="session")
def mongo_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A mongodb:// URI of a MongoDB-wire server (FerretDB on PostgreSQL) for this test session.

    Both servers die with the test run (die_with_parent), even when it is killed."""
    external = os.environ.get("IMX_TEST_MONGO")
    if external:
        yield external
        return
    root = tmp_path_factory.mktemp("ferretdb")
    mongo_port, postgres_port = devstack.free_ports(2)
    home = postgres_home()
    cluster = devstack.PostgresCluster(postgres_port, home)
    procs: list[devstack.ManagedProcess] = []
    try:
        procs.append(devstack.start_postgres(postgres_port, cluster.data_dir, root, die_with_parent=True))
        procs.append(devstack.start_ferretdb(mongo_port, root / "data", root, cluster, die_with_parent=True))
    except devstack.DevstackError as error:
        for proc in reversed(procs):
            proc.stop()
        pytest.fail(f"could not start FerretDB on PostgreSQL: {error}", pytrace=False)
    _POSTGRES_BEHIND[procs[-1].endpoint] = cluster
    try:
        yield procs[-1].endpoint
    finally:
        for proc in reversed(procs):  # FerretDB first: it holds PostgreSQL connections
            proc.stop()
        shutil.rmtree(home.parent, ignore_errors=True)


_POSTGRES_BEHIND: dict[str, devstack.PostgresCluster] = {}


@pytest.fixture(scope="session")
def ferretdb_postgres(mongo_uri: str) -> devstack.PostgresCluster:
    """The PostgreSQL cluster behind the session's FerretDB (only when the tests started it)."""
    if mongo_uri not in _POSTGRES_BEHIND:
        pytest.skip("IMX_TEST_MONGO points at a server the tests did not start")
    return _POSTGRES_BEHIND[mongo_uri]


@pytest.fixture
def make_name() -> Callable[[str], str]:
    """Names unique to this test: make_name("routed") -> "t-routed-1a2b3c4d".

    Valid as a Kafka topic, a consumer group and a MongoDB database name.
    """
    return lambda purpose: f"t-{purpose}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def unique_name() -> str:
    """One name unique to this test, e.g. "t-1a2b3c4d"."""
    return f"t-{uuid.uuid4().hex[:8]}"
