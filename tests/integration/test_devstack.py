"""The local servers every integration test relies on, and the devstack CLI that starts them."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic
from pymongo import MongoClient
from pymongo.errors import DuplicateKeyError

from tests.server_dirs import postgres_home
from tools import devstack
from tools.devstack import postgres as devstack_postgres
from tools.proc_cpu import descendants, parents

ROOT = Path(__file__).resolve().parents[2]


def test_kafka_delivers_a_produced_message_to_a_consumer(kafka_bootstrap: str, make_name: Callable[[str], str]) -> None:
    topic, group = make_name("topic"), make_name("group")
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    finally:
        admin.close()

    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    try:
        producer.send(topic, key=b"1.2.3", value=b"hello").get(timeout=30)
    finally:
        producer.close()

    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=kafka_bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    try:
        received: list[tuple[bytes, bytes]] = []
        deadline = time.monotonic() + 30
        while not received and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                received.extend((record.key, record.value) for record in records)
    finally:
        consumer.close()
    assert received == [(b"1.2.3", b"hello")]


def test_ferretdb_enforces_a_unique_index(mongo_uri: str, unique_name: str) -> None:
    client: MongoClient[dict[str, object]] = MongoClient(mongo_uri)
    try:
        instances = client[unique_name]["instances"]
        instances.create_index("sop_instance_uid", unique=True)
        instances.insert_one({"sop_instance_uid": "1.2.3.4", "state": "ingested"})
        with pytest.raises(DuplicateKeyError):
            instances.insert_one({"sop_instance_uid": "1.2.3.4", "state": "again"})
        assert instances.count_documents({}) == 1
    finally:
        client.drop_database(unique_name)
        client.close()


def psql(cluster: devstack.PostgresCluster, script: str, **variables: str) -> str:
    """Run `script` with psql over TCP, signed in as FerretDB is; `:'name'` quotes a variable."""
    argv = [str(devstack.postgres_bin_dir() / "psql"), "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", cluster.url]
    for name, value in variables.items():
        argv += ["-v", f"{name}={value}"]
    done = subprocess.run(argv, input=script, env=cluster.client_env(), capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_ferretdb_keeps_documents_in_postgresql(
    mongo_uri: str, ferretdb_postgres: devstack.PostgresCluster, unique_name: str
) -> None:
    marker = uuid.uuid4().hex
    client: MongoClient[dict[str, object]] = MongoClient(mongo_uri)
    try:
        client[unique_name]["instances"].insert_one({"sop_instance_uid": marker})
        # FerretDB's PostgreSQL handler keeps a database as a schema and a collection as a table of jsonb.
        stored = psql(
            ferretdb_postgres,
            """SELECT format('SELECT _jsonb->>%L FROM %I.%I', 'sop_instance_uid', table_schema, table_name)
               FROM information_schema.tables
               WHERE table_schema = :'schema' AND table_name NOT LIKE '\\_ferretdb%' \\gexec""",
            schema=unique_name,
        )
    finally:
        client.drop_database(unique_name)
        client.close()
    assert stored.split() == [marker]


def test_the_tests_database_outlives_another_pytest_session_starting(
    mongo_uri: str,
    ferretdb_postgres: devstack.PostgresCluster,
    unique_name: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    # The session's folder is pytest-of-<user>/pytest-N, or pytest-N/popen-gwK in a pytest-xdist worker.
    pytest_root = next((p for p in tmp_path_factory.getbasetemp().parents if p.name.startswith("pytest-of-")), None)
    if pytest_root is None:
        pytest.skip("--basetemp given: no shared pytest root to take rights from")
    # What every pytest session does as it starts: /tmp/pytest-of-<user> loses its group and other bits.
    pytest_root.chmod(stat.S_IMODE(pytest_root.stat().st_mode) & ~0o077)
    psql(ferretdb_postgres, "CHECKPOINT")  # the checkpointer opens the cluster's files by their full path
    client: MongoClient[dict[str, object]] = MongoClient(mongo_uri)
    try:
        client[unique_name]["after"].insert_one({"_id": "still-here"})  # a new database: new connections
        assert client[unique_name]["after"].find_one({"_id": "still-here"}) is not None
    finally:
        client.drop_database(unique_name)
        client.close()


def _assert_id_lookup_uses_an_index(mongo_uri: str, database: str) -> None:
    client: MongoClient = MongoClient(mongo_uri)
    try:
        db = client[database]
        db["lookups"].insert_many([{"_id": f"k{i:05d}", "pad": "x" * 200} for i in range(3000)])
        explained = db.command("explain", {"find": "lookups", "filter": {"_id": "k01234"}})
        plan = explained["queryPlanner"]["Plan"]
        nodes = [plan["Node Type"], *(child["Node Type"] for child in plan.get("Plans", []))]
        assert "Seq Scan" not in nodes, nodes
        assert db["lookups"].find_one({"_id": "k01234"}) is not None
    finally:
        client.drop_database(database)
        client.close()


def test_an_id_lookup_uses_an_index_in_every_collection_ferretdb_creates(mongo_uri: str, unique_name: str) -> None:
    """FerretDB 1.24 filters `_id` with a JSONB containment test no btree serves; the devstack's event
    trigger gives each new table a GIN index for it (tools/devstack/postgres.py ID_LOOKUP_SQL)."""
    _assert_id_lookup_uses_an_index(mongo_uri, unique_name)


ID_INDEXES_SQL = """
-- the `_id` index of the collection `pending` in the database :db, and its options
SELECT c.relname || ' ' || coalesce(array_to_string(c.reloptions, ','), '-')
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = :'db' AND c.relkind = 'i' AND c.relname LIKE 'pending%imx_id'
"""


def test_id_indexes_put_inserts_in_the_tree_not_a_pending_list(
    mongo_uri: str, ferretdb_postgres: devstack.PostgresCluster, unique_name: str
) -> None:
    """A GIN index's pending list is read in full by every lookup; the devstack's `_id` indexes keep
    none (fastupdate off), and one made before that, with the default, is switched at the next start."""
    client: MongoClient[dict[str, object]] = MongoClient(mongo_uri)
    try:
        client[unique_name]["pending"].insert_many([{"_id": f"k{i}"} for i in range(100)])
        name, options = psql(ferretdb_postgres, ID_INDEXES_SQL, db=unique_name).split()
        assert options == "fastupdate=off"
        psql(ferretdb_postgres, 'ALTER INDEX :"db".:"name" SET (fastupdate = on)', db=unique_name, name=name)
        psql(ferretdb_postgres, devstack_postgres.ID_LOOKUP_SQL)  # what every start of the cluster runs
        again = psql(ferretdb_postgres, ID_INDEXES_SQL, db=unique_name).split()
        assert again == [name, "fastupdate=off"]
        assert client[unique_name]["pending"].find_one({"_id": "k42"}) == {"_id": "k42"}
    finally:
        client.drop_database(unique_name)
        client.close()


PORT_VARIABLES = (
    "IMX_KAFKA_PORT",
    "IMX_KAFKA_CONTROLLER_PORT",
    "IMX_KAFKA_PARTNER_PORT",
    "IMX_MONGO_PORT",
    "IMX_POSTGRES_PORT",
)


def free_port_variables() -> dict[str, int]:
    """A free port for each variable the devstack takes one from."""
    return dict(zip(PORT_VARIABLES, devstack.free_ports(len(PORT_VARIABLES)), strict=True))


def test_the_stack_that_up_starts_indexes_id_lookups_too(tmp_path: Path, unique_name: str) -> None:
    """`make run`, `make bench` and `make chaos` start the servers through `tools.devstack up`, which
    starts them in parallel: it once skipped the index trigger, and every `_id` lookup scanned (the
    slowdown that grew with var/: PostgreSQL went from 7 to 39 ms of CPU per instance over six
    `make bench` runs)."""
    ports = free_port_variables()
    env = {**os.environ, **{name: str(port) for name, port in ports.items()}}
    command = [sys.executable, "-m", "tools.devstack"]
    try:
        subprocess.run([*command, "up", "--var-dir", str(tmp_path)], cwd=ROOT, env=env, check=True, timeout=120)
        _assert_id_lookup_uses_an_index(f"mongodb://{devstack.HOST}:{ports['IMX_MONGO_PORT']}/", unique_name)
    finally:
        subprocess.run([*command, "stop", "--var-dir", str(tmp_path)], cwd=ROOT, env=env, timeout=120)


def test_concurrent_bulk_updates_do_not_deadlock_ferretdb(mongo_uri: str, unique_name: str) -> None:
    """With pgx's default pool, eight clients sending 60-statement bulk updates at once deadlocked
    FerretDB until they timed out (tools/devstack/servers.py FERRETDB_POOL)."""
    import threading

    from pymongo import UpdateOne

    outcomes: dict[int, str] = {}

    def bulk(client_no: int) -> None:
        client: MongoClient = MongoClient(mongo_uri, socketTimeoutMS=20_000)
        try:
            ops = [UpdateOne({"_id": f"{client_no}-{i}"}, {"$set": {"v": i}}, upsert=True) for i in range(60)]
            client[unique_name]["bulk"].bulk_write(ops, ordered=False)
            outcomes[client_no] = "ok"
        except Exception as error:  # the test reports which clients failed and how
            outcomes[client_no] = type(error).__name__
        finally:
            client.close()

    threads = [threading.Thread(target=bulk, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    client: MongoClient = MongoClient(mongo_uri)
    try:
        assert outcomes == dict.fromkeys(range(8), "ok")
        assert client[unique_name]["bulk"].count_documents({}) == 480
    finally:
        client.drop_database(unique_name)
        client.close()


def test_stop_all_stops_ferretdb_and_then_its_postgresql(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    run_dir = tmp_path / "run"
    mongo_port, postgres_port = devstack.free_ports(2)
    home = postgres_home()
    request.addfinalizer(lambda: shutil.rmtree(home.parent, ignore_errors=True))
    cluster = devstack.PostgresCluster(postgres_port, home)
    postgres = devstack.start_postgres(postgres_port, cluster.data_dir, tmp_path, run_dir=run_dir, die_with_parent=True)
    ferretdb = devstack.start_ferretdb(
        mongo_port, tmp_path / "ferretdb", tmp_path, cluster, run_dir=run_dir, die_with_parent=True
    )
    assert {p.name for p in devstack.registered(run_dir)} == {"postgres", "ferretdb"}

    stopped = devstack.stop_all(run_dir)

    assert [p.name for p in stopped] == ["ferretdb", "postgres"]  # the order they were stopped in
    assert not postgres.alive()
    assert not ferretdb.alive()
    assert not list(run_dir.glob("*.pid"))
    assert not (cluster.cluster_dir / "postmaster.pid").exists(), "PostgreSQL did not shut down cleanly"
    assert "database system is shut down" in postgres.log_tail()


def test_postgresql_dies_with_the_process_that_started_it(tmp_path: Path) -> None:
    starter = f"""
import time
from pathlib import Path
from tools import devstack
root = Path({str(tmp_path)!r})
devstack.start_postgres(devstack.free_port(), root / "postgres", root, run_dir=root / "run", die_with_parent=True)
print("started", flush=True)
time.sleep(120)
"""
    parent = subprocess.Popen([sys.executable, "-c", starter], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        assert parent.stdout.readline().strip() == "started", f"see {tmp_path / 'postgres.log'}"
        [postgres] = devstack.registered(tmp_path / "run")
    finally:
        parent.send_signal(signal.SIGKILL)  # no finaliser, no atexit: only the kernel can clean up
        parent.wait()

    deadline = time.monotonic() + 15
    while postgres.alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not postgres.alive(), "an orphan PostgreSQL survived the process that started it"


@pytest.mark.parametrize("taken", PORT_VARIABLES)
def test_up_names_a_taken_port_and_its_variable_and_exits_2(tmp_path: Path, taken: str) -> None:
    with socket.socket() as squatter:
        squatter.bind((devstack.HOST, 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        # Every port the devstack takes free but the one taken: a devstack already running on this
        # machine (on the defaults) must not be what the message names.
        env = {**os.environ, **{name: str(free) for name, free in free_port_variables().items()}, taken: str(port)}
        done = subprocess.run(
            [sys.executable, "-m", "tools.devstack", "up", "--var-dir", str(tmp_path)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    assert done.returncode == 2
    message = done.stderr.strip()
    assert len(message.splitlines()) == 1, message
    assert str(port) in message
    assert taken in message
    assert not list(tmp_path.glob("run/*.pid")), "nothing may be left running"


def test_stop_all_stops_registered_processes_and_forgets_stale_pid_files(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = devstack.start_process(
        "sleeper", ["sleep", "60"], tmp_path / "sleeper.log", run_dir=run_dir, die_with_parent=True
    )
    stale = run_dir / "gone.pid"
    stale.write_text("999999999\n{}\n")

    assert [p.pid for p in devstack.registered(run_dir)] == [proc.pid]
    assert not stale.exists()

    assert [p.name for p in devstack.stop_all(run_dir)] == ["sleeper"]
    assert not proc.alive()
    assert not list(run_dir.glob("*.pid"))


def test_stop_all_stops_a_server_started_again_after_the_services_still_after_them(tmp_path: Path) -> None:
    """`make up` after a broker crash registers the new broker last; stopped newest first, it went before
    the services, whose final commits then waited for it (`make stop` took ~58 s after `make chaos`)."""
    run_dir = tmp_path / "run"
    for name in ("ingest", "routing", "kafka"):  # in the order started; pid files are ordered by time
        devstack.start_process(name, ["sleep", "60"], tmp_path / f"{name}.log", run_dir=run_dir, die_with_parent=True)
        time.sleep(0.02)

    stopped = devstack.stop_all(run_dir, last=("ferretdb", "kafka"))

    assert [p.name for p in stopped] == ["routing", "ingest", "kafka"]
    assert not list(run_dir.glob("*.pid"))


def test_nothing_postgresql_acknowledged_is_lost_when_its_processes_are_killed(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """The devstack's PostgreSQL skips fsync, but writes each commit to the operating system before
    FerretDB acknowledges it: a crash of PostgreSQL itself (`make chaos`'s database-crash) loses none."""
    mongo_port, postgres_port = devstack.free_ports(2)
    home = postgres_home()
    request.addfinalizer(lambda: shutil.rmtree(home.parent, ignore_errors=True))
    cluster = devstack.PostgresCluster(postgres_port, home)
    postgres = devstack.start_postgres(postgres_port, cluster.data_dir, tmp_path, die_with_parent=True)
    ferretdb = devstack.start_ferretdb(mongo_port, tmp_path / "ferretdb", tmp_path, cluster, die_with_parent=True)
    request.addfinalizer(ferretdb.stop)
    client: MongoClient = MongoClient(ferretdb.endpoint, serverSelectionTimeoutMS=5000)
    request.addfinalizer(client.close)
    collection = client["crash"]["acknowledged"]
    acknowledged: list[int] = []
    stop = threading.Event()

    def write_one_at_a_time() -> None:
        while not stop.is_set():
            try:
                collection.insert_one({"_id": len(acknowledged)})
            except Exception:  # PostgreSQL is gone: FerretDB answers with an error
                return
            acknowledged.append(len(acknowledged))

    writer = threading.Thread(target=write_one_at_a_time)
    writer.start()
    time.sleep(2)
    processes = [postgres.pid, *descendants(postgres.pid, parents())]
    for pid in processes:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    stop.set()
    writer.join(timeout=30)
    if postgres.popen is not None:
        postgres.popen.wait()  # reaped: PostgreSQL refuses to start while its lock file's PID exists
    deadline = time.monotonic() + 30
    while any(Path(f"/proc/{pid}").exists() for pid in processes[1:]):
        assert time.monotonic() < deadline, "the killed PostgreSQL's processes did not go away"
        time.sleep(0.1)
    restarted = devstack.start_postgres(postgres_port, cluster.data_dir, tmp_path, die_with_parent=True)
    request.addfinalizer(restarted.stop)

    assert len(acknowledged) > 100, "the writer barely wrote: the test says nothing"
    stored = {document["_id"] for document in collection.find({}, {"_id": 1})}
    missing = sorted(set(acknowledged) - stored)
    assert not missing, f"{len(missing)} of {len(acknowledged)} acknowledged inserts lost"
