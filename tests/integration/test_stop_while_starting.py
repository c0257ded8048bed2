"""A service asked to stop while it waits for its broker at start-up (the broker down or frozen) exits
then, instead of opening its Kafka clients against the broker that is still away first; `imx send`
gives up waiting for one after a while, and says why."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from services.common import health_probe
from services.common.control_server import LIVENESS
from services.ingest.sender import BrokerNotAnswering, DatabaseNotAnswering, send_with_settings
from services.ingest.settings import IngestSettings
from tools.devstack import free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("service", ["services.routing", "services.ingest"])
def test_a_service_stopped_while_it_waits_for_the_broker_exits_at_once(tmp_path: Path, service: str) -> None:
    """Before, the stop only ended the wait: the service went on to open its Kafka clients against the
    broker that was still away, and exited 30-40 s later (a supervisor stopped by `make stop` meanwhile
    was killed, leaving the service running without it)."""
    log_path = tmp_path / "service.log"
    env = {
        **os.environ,
        "IMX_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}",  # nothing listens: the broker is down
        "IMX_MONGO_URI": f"mongodb://127.0.0.1:{free_port()}/",
        "IMX_GRPC_PORT": str(free_port()),
        "IMX_BLOB_DIR": str(tmp_path / "blobs"),
    }
    with log_path.open("wb") as log:
        process = subprocess.Popen([sys.executable, "-m", service], cwd=ROOT, env=env, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 30
        while b"Bootstrap" not in log_path.read_bytes():  # kafka-python's first try: the stop handler is in place
            assert process.poll() is None and time.monotonic() < deadline, log_path.read_text()[-2000:]
            time.sleep(0.1)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0, log_path.read_text()[-2000:]  # at most one 10 s try in between
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert b"service stopped before it started" in log_path.read_bytes()


def test_a_stage_waiting_for_its_broker_is_alive_but_not_ready(tmp_path: Path) -> None:
    """What the chart's probes ask: liveness and startup `imx.live`, readiness "". Before, the control
    server started only once the broker answered, and liveness asked readiness: a Kafka outage had every
    stage restarted after ~60 s, and the restarted ones failed their startup probe until Kafka was back."""
    grpc_port = free_port()
    log_path = tmp_path / "service.log"
    env = {
        **os.environ,
        "IMX_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}",  # nothing listens: the broker is down
        "IMX_MONGO_URI": f"mongodb://127.0.0.1:{free_port()}/",
        "IMX_GRPC_PORT": str(grpc_port),
        "IMX_BLOB_DIR": str(tmp_path / "blobs"),
    }
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "services.routing"], cwd=ROOT, env=env, stdout=log, stderr=log
        )
    address = f"127.0.0.1:{grpc_port}"
    try:
        deadline = time.monotonic() + 30
        while health_probe.check(address, LIVENESS, timeout_s=1) != "SERVING":
            assert process.poll() is None and time.monotonic() < deadline, log_path.read_text()[-2000:]
            time.sleep(0.2)
        assert health_probe.check(address, "", timeout_s=3) == "NOT_SERVING"
        assert health_probe.check(address, "imx.routing", timeout_s=3) == "NOT_SERVING"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0, log_path.read_text()[-2000:]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_imx_send_gives_up_on_a_broker_that_does_not_answer_and_says_what_to_check(tmp_path: Path) -> None:
    """It waited for ever, printing "broker unreachable", beside the devstack's broker (which takes only
    signed-in clients) when the shell had no sign-in."""
    settings = IngestSettings(
        kafka_bootstrap=f"127.0.0.1:{free_port()}",
        mongo_uri=f"mongodb://127.0.0.1:{free_port()}/",
        blob_dir=tmp_path / "blobs",
    )
    (tmp_path / "in").mkdir()
    started = time.monotonic()
    with pytest.raises(BrokerNotAnswering) as raised:
        send_with_settings([tmp_path / "in"], source_org="anyone", settings=settings, broker_wait_s=1.0)
    assert time.monotonic() - started < 15  # the try in progress when the wait ran out (10 s at most)
    assert settings.kafka_bootstrap in str(raised.value) and "tools.devstack env" in str(raised.value)


def test_imx_send_says_plainly_when_mongodb_does_not_answer(kafka_bootstrap: str, tmp_path: Path) -> None:
    """With the broker up and MongoDB down, pymongo's own error came out as a traceback."""
    settings = IngestSettings(
        kafka_bootstrap=kafka_bootstrap,
        mongo_uri=f"mongodb://user:secret@127.0.0.1:{free_port()}/",
        blob_dir=tmp_path / "blobs",
    )
    (tmp_path / "in").mkdir()
    with pytest.raises(DatabaseNotAnswering) as raised:
        send_with_settings([tmp_path / "in"], source_org="anyone", settings=settings)
    assert "IMX_MONGO_URI" in str(raised.value) and "secret" not in str(raised.value)
