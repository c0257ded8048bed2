"""A folder target; a wrong SHA-256 dead-letters one instance and the others go on; replay after the
object is fixed; a wrong password is said plainly."""

from __future__ import annotations

import os
import time
from pathlib import Path

from typer.testing import CliRunner

from services.cli.main import app
from services.proto_gen.imx.v1 import events_pb2
from tests.integration.gateway.conftest import Partner, gateway_thread


def test_a_corrupt_object_is_dead_lettered_the_rest_stored_and_replay_stores_it_once_fixed(
    partner: Partner, ct_study: list, tmp_path: Path
) -> None:
    root = tmp_path / "received"
    root.mkdir()
    bad = ct_study[2]
    partner.publish(ct_study[:5], study_complete=True)
    partner.server.objects[partner.url_of(bad)] = bad.data[:-1] + b"\xff"  # same size, other bytes
    with gateway_thread(partner.settings(f"file://{root}", idle_exit_s=2.0)) as (_stop, done):
        counters = done.result(timeout=60)
    assert (counters.stored, counters.dead_lettered) == (4, 1)
    assert counters.studies_incomplete == 1
    stored = {p.name for p in root.rglob("*.dcm")}
    assert stored == {f"{i.sop}.dcm" for i in ct_study[:5] if i is not bad}

    receipts = partner.receipts(6)
    [dead] = [r for r in receipts if r.status == events_pb2.STORE_STATUS_DEAD_LETTERED]
    assert dead.detail == "sha256-mismatch" and dead.attempts == 3
    [study] = [r for r in receipts if r.status == events_pb2.STORE_STATUS_STUDY_INCOMPLETE]
    assert study.missing == 1

    runner = CliRunner()
    env = {
        "IMX_GATEWAY_DICOMWEB_KEY": partner.server.key,
        "IMX_TOPIC_PREFIX": partner.topics.prefix,
        "IMX_GATEWAY_PASSWORD": partner.password,
    }
    listed = runner.invoke(app, ["gateway", "dead-letters", "list", "--state-dir", str(partner.state_dir)], env=env)
    assert listed.exit_code == 0 and dead.delivery_id in listed.output and "sha256-mismatch" in listed.output

    partner.serve([bad])  # the object is right again
    replayed = runner.invoke(
        app,
        [
            "gateway",
            "dead-letters",
            "replay",
            dead.delivery_id,
            "--state-dir",
            str(partner.state_dir),
            "--target",
            f"file://{root}",
            "--partner",
            partner.partner_id,
            "--bootstrap",
            partner.partner_bootstrap,
            "--username",
            partner.username,
        ],
        env=env,
    )
    assert replayed.exit_code == 0, replayed.output
    assert (root / bad.study / bad.series / f"{bad.sop}.dcm").read_bytes() == bad.data
    listed = runner.invoke(app, ["gateway", "dead-letters", "list", "--state-dir", str(partner.state_dir)], env=env)
    assert "0 dead letter(s)" in listed.output
    stored_again = [r for r in partner.receipts(7) if r.delivery_id == dead.delivery_id]
    assert [r.status for r in stored_again] == [events_pb2.STORE_STATUS_DEAD_LETTERED, events_pb2.STORE_STATUS_STORED]


def test_a_wrong_password_is_reported_as_a_refused_sign_in_without_a_traceback(
    partner: Partner, tmp_path: Path
) -> None:
    started = time.monotonic()
    result = CliRunner().invoke(
        app,
        [
            "gateway",
            "run",
            "--partner",
            partner.partner_id,
            "--target",
            f"file://{tmp_path}/x",
            "--bootstrap",
            partner.partner_bootstrap,
            "--username",
            partner.username,
            "--state-dir",
            str(tmp_path / "state"),
            "--idle-exit",
            "1",
        ],
        env={
            "IMX_GATEWAY_PASSWORD": "wrong",
            "IMX_GATEWAY_DICOMWEB_KEY": "k",
            "IMX_TOPIC_PREFIX": partner.topics.prefix,
            "COLUMNS": "200",
        },
    )
    assert result.exit_code == 1
    assert "refused" in result.output and "password" in result.output and "Traceback" not in result.output
    assert time.monotonic() - started < 30
    assert os.environ.get("IMX_GATEWAY_PASSWORD") is None
