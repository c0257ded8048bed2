"""The whole audit service: consumer + HTTP API + gRPC health in one process, stopped gracefully."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pymongo import MongoClient

from services.common.control_channel import control_channel
from services.common.topics import Topics
from services.proto_gen.imx.v1 import admin_pb2, admin_pb2_grpc
from tests.integration.audit.helpers import audit_settings, publish_journey, running_audit
from tests.unit.audit.builders import Instance
from tests.waiting import wait_for
from tools.devstack import free_ports

REPO = Path(__file__).resolve().parents[3]
STUDY = Instance()


def _trail_complete(http_port: int, api_key: str = "") -> bool:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        response = httpx.get(f"http://127.0.0.1:{http_port}/audit/studies/{STUDY.study}", timeout=2, headers=headers)
    except httpx.HTTPError:
        return False
    return response.status_code == 200 and len(response.json()["events"]) == 5


@pytest.fixture
def database(mongo_uri: str, unique_name: str) -> Iterator[str]:
    yield unique_name
    client: MongoClient = MongoClient(mongo_uri, serverSelectionTimeoutMS=5000)
    client.drop_database(unique_name)
    client.close()


def test_serve_answers_http_and_grpc_health_and_returns_when_stopped(
    kafka_bootstrap: str, mongo_uri: str, unique_name: str, database: str
) -> None:
    topics = Topics(prefix=unique_name + ".")
    publish_journey(kafka_bootstrap, topics, STUDY)
    with running_audit(audit_settings(kafka_bootstrap, mongo_uri, database, topics)) as endpoints:
        with control_channel(f"127.0.0.1:{endpoints.grpc_port}") as channel:
            analysts = admin_pb2_grpc.AnalystAdminStub(channel)
            request = admin_pb2.AddAnalystRequest(analyst=admin_pb2.Analyst(analyst_id="ann", name="Ann"))
            api_key = analysts.AddAnalyst(request, timeout=10).api_key
            listed = analysts.ListAnalysts(admin_pb2.ListAnalystsRequest(), timeout=10).analysts
        assert [(a.analyst_id, a.name) for a in listed] == [("ann", "Ann")]
        wait_for(lambda: _trail_complete(endpoints.http_port, api_key), 30, "the trail over HTTP")
        trail_url = f"http://127.0.0.1:{endpoints.http_port}/audit/studies/{STUDY.study}"
        assert httpx.get(trail_url).status_code == 401, "no key, no trail"
        assert httpx.get(f"http://127.0.0.1:{endpoints.http_port}/healthz").json() == {"status": "ok", "store": True}
        with grpc.insecure_channel(f"127.0.0.1:{endpoints.grpc_port}") as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="imx.audit"), timeout=5
            )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_python_m_services_audit_stops_cleanly_on_sigterm(
    kafka_bootstrap: str, mongo_uri: str, unique_name: str, database: str, tmp_path: Path
) -> None:
    topics = Topics(prefix=unique_name + ".")
    publish_journey(kafka_bootstrap, topics, STUDY)
    http_port, grpc_port = free_ports(2)
    env = {
        **os.environ,
        "IMX_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "IMX_MONGO_URI": mongo_uri,
        "IMX_MONGO_DB": database,
        "IMX_TOPIC_PREFIX": topics.prefix,
        "IMX_TOPIC_PARTITIONS": "1",
        "IMX_AUDIT_HTTP_PORT": str(http_port),
        "IMX_AUDIT_GRPC_PORT": str(grpc_port),
        "IMX_AUDIT_REQUIRE_API_KEY": "false",  # explicitly open, as behind an authenticating proxy
    }
    log = tmp_path / "audit.log"
    with log.open("wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.audit"], cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=stderr
        )
    try:
        wait_for(lambda: _trail_complete(http_port) or proc.poll() is not None, 40, "the trail over HTTP")
        assert proc.poll() is None, log.read_text()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert '"msg":"service stopped"' in log.read_text()
