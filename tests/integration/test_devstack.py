"""The local servers every integration test relies on, and the devstack CLI that starts them."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic
from pymongo import MongoClient
from pymongo.errors import DuplicateKeyError

from tools import devstack

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


@pytest.mark.parametrize("taken", ["IMX_KAFKA_PORT", "IMX_KAFKA_CONTROLLER_PORT", "IMX_MONGO_PORT"])
def test_up_names_a_taken_port_and_its_variable_and_exits_2(tmp_path: Path, taken: str) -> None:
    with socket.socket() as squatter:
        squatter.bind((devstack.HOST, 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        variables = ("IMX_KAFKA_PORT", "IMX_KAFKA_CONTROLLER_PORT", "IMX_MONGO_PORT")
        env = {**os.environ, **{v: str(p) for v, p in zip(variables, devstack.free_ports(3), strict=True)}}
        env[taken] = str(port)
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
