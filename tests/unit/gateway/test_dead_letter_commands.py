"""`imx gateway dead-letters`: a damaged dead-letter file is named, not skipped in silence or raised as a
traceback; a malformed delivery id and a mistyped --state-dir are usage errors (the folder is not made)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from kafka.errors import KafkaTimeoutError
from typer.testing import CliRunner

from services.cli.gateway import _sign_in_failed
from services.cli.main import app
from services.gateway.records import DeadLetters, InstanceVersion, StoredRecords, UnreadableDeadLetter
from services.gateway.worker import GatewayStopped, state_paths
from services.proto_gen.imx.v1 import events_pb2

runner = CliRunner()
REPLAY = [
    "gateway",
    "dead-letters",
    "replay",
    "--target",
    "file:///tmp/nowhere",
    "--dicomweb-key",
    "k",
    "--no-receipts",
]


def _damaged(state_dir: Path) -> Path:
    folder = state_paths(state_dir)[2]
    folder.mkdir(parents=True)
    (folder / "abc123.json").write_text("{ not json")
    return folder


def test_a_damaged_dead_letter_is_named_by_list_and_by_replay(tmp_path: Path) -> None:
    folder = _damaged(tmp_path / "state")
    listed = runner.invoke(app, ["gateway", "dead-letters", "list", "--state-dir", str(tmp_path / "state")])
    assert listed.exit_code == 1 and "abc123.json" in listed.output and "do not hold a dead letter" in listed.output
    try:
        DeadLetters(folder).get("abc123")
    except UnreadableDeadLetter:
        pass
    else:
        raise AssertionError("a damaged file read as no dead letter at all")


def test_a_malformed_id_and_a_missing_state_folder_are_usage_errors(tmp_path: Path) -> None:
    result = runner.invoke(app, [*REPLAY, "../../etc/passwd", "--state-dir", str(tmp_path / "state")])
    assert result.exit_code == 2 and "not a delivery id" in result.output
    result = runner.invoke(app, [*REPLAY, "--all", "--state-dir", str(tmp_path / "typo")])
    assert result.exit_code == 2 and "no dead letters" in " ".join(result.output.split())
    assert not (tmp_path / "typo").exists(), "a mistyped --state-dir was made"


def _delivery(event_id: str) -> events_pb2.PartnerDelivery:
    delivery = events_pb2.PartnerDelivery(meta=events_pb2.EventMeta(event_id=event_id))
    delivery.blob.sha256 = "ab" * 32
    delivery.instance.study_instance_uid = "1.2.3"
    return delivery


def test_a_dead_letter_is_settled_when_its_delivery_is_stored_after_all(tmp_path: Path) -> None:
    """A gateway killed after dead-lettering and before its commit reads the delivery again, and may store
    it then: its dead letter stayed listed, and a replay sent it to the target a second time."""
    folder = tmp_path / "dead-letters"
    letters = DeadLetters(folder)
    letters.put(_delivery("d1"), "dimse-a700", 10, "dicom", 1)
    letters.put(_delivery("d2"), "dimse-a700", 10, "dicom", 1)
    letters.settle("d1")
    letters.settle("never-dead-lettered")
    assert [letter.delivery_id for letter in DeadLetters(folder)] == ["d2"]


def _replay_all(tmp_path: Path) -> tuple[Any, Path]:
    """`imx gateway dead-letters replay --all` of the state folder under `tmp_path` to an empty folder:
    the command's result (exit code 0 asserted) and that folder."""
    target = tmp_path / "target"
    target.mkdir()
    args = ["gateway", "dead-letters", "replay", "--all", "--state-dir", str(tmp_path / "state"), "--no-receipts"]
    result = runner.invoke(app, [*args, "--target", f"file://{target}", "--dicomweb-key", "k"])
    assert result.exit_code == 0, result.output
    return result, target


def test_replay_does_not_send_again_what_was_stored_after_it_was_dead_lettered(tmp_path: Path) -> None:
    _incoming, records_path, folder = state_paths(tmp_path / "state")
    DeadLetters(folder).put(_delivery("d1"), "dimse-a700", 10, "file", 1)
    records = StoredRecords(records_path)
    records.add("d1", "ab" * 32, "1.2.3", 2)
    records.close()
    result, target = _replay_all(tmp_path)
    assert "already-stored" in result.output
    assert list(DeadLetters(folder)) == [] and list(target.iterdir()) == []


def test_a_kafka_failure_hours_into_a_run_is_not_called_a_refused_sign_in(capsys: pytest.CaptureFixture[str]) -> None:
    _sign_in_failed("kafka:9093", KafkaTimeoutError(), running_s=3 * 3600)
    later = " ".join(capsys.readouterr().out.split())
    assert "failed after 10800 s" in later and "password" not in later
    _sign_in_failed("kafka:9093", KafkaTimeoutError(), running_s=5)
    assert "check --bootstrap, --username and the password" in " ".join(capsys.readouterr().out.split())


def test_a_mistyped_state_folder_is_not_an_all_clear_and_an_unknown_protocol_is_a_usage_error(tmp_path: Path) -> None:
    listed = runner.invoke(app, ["gateway", "dead-letters", "list", "--state-dir", str(tmp_path / "typo")])
    assert listed.exit_code == 2 and "no gateway state folder" in " ".join(listed.output.split()), listed.output
    (tmp_path / "state").mkdir()  # a gateway that never dead-lettered anything
    quiet = runner.invoke(app, ["gateway", "dead-letters", "list", "--state-dir", str(tmp_path / "state")])
    assert quiet.exit_code == 0 and "no dead letters" in quiet.output
    args = ["--partner", "p", "--target", f"file://{tmp_path}", "--bootstrap", "127.0.0.1:9", "--dicomweb-key", "k"]
    odd = runner.invoke(app, ["gateway", "run", *args, "--security-protocol", "SASL_TLS"])
    assert odd.exit_code == 2 and "SASL_SSL" in odd.output  # said at once, not after a 10 s sign-in wait


def test_replay_does_not_put_an_older_send_back_over_its_correction(tmp_path: Path) -> None:
    """Dead-lettered, then its correction (a newer send of the same instance) was stored: a replay of the
    original would put the old content back over the new."""
    _incoming, records_path, folder = state_paths(tmp_path / "state")
    original = _delivery("d1")
    original.meta.ingested_at_ms = 1_000
    original.instance.series_instance_uid, original.instance.sop_instance_uid = "1.2.3.1", "1.2.3.1.1"
    DeadLetters(folder).put(original, "dimse-a700", 10, "file", 1)
    records = StoredRecords(records_path)
    records.add("fix", "cd" * 32, "1.2.3", 2, InstanceVersion("1.2.3/1.2.3.1/1.2.3.1.1", 2_000, "fix"))
    records.close()
    result, target = _replay_all(tmp_path)
    assert "superseded" in result.output
    assert list(DeadLetters(folder)) == [] and list(target.iterdir()) == []


def test_a_replay_refuses_a_state_folder_a_gateway_is_working_on_and_a_killed_gateway_holds_nothing(
    tmp_path: Path,
) -> None:
    """A replay beside the running gateway could store an older send over one the gateway stored
    meanwhile (each reads the newest-send record before its store): the second is refused, named, at
    once; and the lock goes with its process, however that ends."""
    import subprocess
    import sys

    from services.gateway.state_lock import state_folder_lock

    state = tmp_path / "state"
    DeadLetters(state_paths(state)[2]).put(_delivery("d1"), "dimse-a700", 10, "file", 1)
    args = [*REPLAY, "--all", "--state-dir", str(state)]
    with state_folder_lock(state, "imx gateway run"):
        refused = runner.invoke(app, args)
    said = " ".join(refused.output.split())
    assert refused.exit_code == 1 and "in use" in said and "imx gateway run" in said, refused.output
    assert [letter.delivery_id for letter in DeadLetters(state_paths(state)[2])] == ["d1"], "nothing replayed"

    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path;"
            " from services.gateway.state_lock import state_folder_lock as lock;"
            " cm = lock(Path(sys.argv[1]), 'held'); cm.__enter__(); print('ready', flush=True); time.sleep(60)",
            str(state),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        with pytest.raises(GatewayStopped, match="in use"), state_folder_lock(state, "replay"):
            pass
    finally:
        holder.kill()
        holder.wait()
    with state_folder_lock(state, "replay"):  # SIGKILL released it
        pass


def test_a_replay_killed_before_its_receipt_sends_it_the_next_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stored by a replay that was killed before its STORED receipt went out: the next replay finds it
    stored, does not send it to the target again, and reports it, under the id recorded with the store
    (the same receipt if it had gone), or delivery would count it owed for ever."""
    from services.gateway import runner as runner_module

    sent: list[events_pb2.DeliveryReceipt] = []

    class Acknowledged:
        def get(self, timeout: float | None = None) -> None:
            pass

    class Producer:
        def send(self, topic: str, value: bytes, **kwargs: Any) -> Acknowledged:
            sent.append(events_pb2.DeliveryReceipt.FromString(value))
            return Acknowledged()

        def close(self) -> None:
            pass

    monkeypatch.setattr(runner_module, "producer_for", lambda *args, **kwargs: Producer())
    _incoming, records_path, folder = state_paths(tmp_path / "state")
    DeadLetters(folder).put(_delivery("d1"), "dimse-a700", 3, "file", 1)
    records = StoredRecords(records_path)
    records.add("d1", "ab" * 32, "1.2.3", 2, receipt_id="the-recorded-id")
    records.close()
    target = tmp_path / "target"
    target.mkdir()
    args = ["gateway", "dead-letters", "replay", "--all", "--state-dir", str(tmp_path / "state")]
    args += ["--target", f"file://{target}", "--dicomweb-key", "k", "--partner", "p", "--bootstrap", "127.0.0.1:9"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0 and "already-stored" in result.output, result.output
    assert [(r.meta.event_id, r.delivery_id, r.stored_at_ms) for r in sent] == [("the-recorded-id", "d1", 2)]
    assert list(target.iterdir()) == [] and list(DeadLetters(folder)) == []


def test_a_note_another_user_made_does_not_stop_the_lock_and_an_unusable_folder_is_said(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A replay run as root before the gateway ever ran leaves the note `lock` owned by root, which the
    service user may neither write nor read: the lock is the folder's own, so the gateway still takes
    it; one refused then names whoever the note last named, or says so without one. A folder that
    cannot be opened is a stop, said."""
    import os

    from services.gateway import state_lock

    state = tmp_path / "state"
    with state_lock.state_folder_lock(state, "replay as root"):
        pass
    real_open = os.open

    def as_another_user(path: Any, flags: int, *args: Any) -> int:
        if str(path).endswith("/lock"):
            raise PermissionError(13, "Permission denied")
        return real_open(path, flags, *args)

    monkeypatch.setattr(state_lock.os, "open", as_another_user)
    held = state_lock.state_folder_lock(state, "imx gateway run")
    held.__enter__()  # the note cannot be opened at all: the lock is taken all the same
    try:
        with (
            pytest.raises(state_lock.StateFolderBusy, match=r"last taken by pid \d+, replay as root"),
            state_lock.state_folder_lock(state, "2"),
        ):
            pass
        (state / "lock").unlink()  # no note to read: said without one
        with (
            pytest.raises(state_lock.StateFolderBusy, match="by another process"),
            state_lock.state_folder_lock(state, "3"),
        ):
            pass
    finally:
        held.__exit__(None, None, None)
    (tmp_path / "file").write_text("")
    with pytest.raises(GatewayStopped, match="cannot be used"), state_lock.state_folder_lock(tmp_path / "file", "x"):
        pass


def test_a_replay_reports_what_it_stores_unless_told_not_to(tmp_path: Path) -> None:
    """Stored but never reported, a delivery stays owed at the exchange (its objects kept for ever) and
    dead-lettered in its audit trail: a replay without the Kafka options is refused unless --no-receipts
    says so, and nothing is stored then."""
    _incoming, _records, folder = state_paths(tmp_path / "state")
    DeadLetters(folder).put(_delivery("d1"), "dimse-a700", 3, "file", 1)
    target = tmp_path / "target"
    target.mkdir()
    args = ["gateway", "dead-letters", "replay", "--all", "--state-dir", str(tmp_path / "state")]
    args += ["--target", f"file://{target}", "--dicomweb-key", "k"]
    for partial in ([], ["--partner", "p"], ["--bootstrap", "127.0.0.1:9"]):
        refused = runner.invoke(app, [*args, *partial], env={"IMX_GATEWAY_PARTNER": "", "IMX_GATEWAY_BOOTSTRAP": ""})
        said = " ".join(refused.output.split())
        assert refused.exit_code == 2 and "--no-receipts" in said and "--bootstrap" in said, refused.output
    assert [letter.delivery_id for letter in DeadLetters(folder)] == ["d1"] and list(target.iterdir()) == []
    told = runner.invoke(app, [*args, "--no-receipts", "--partner", "p"])
    assert "not reported: --no-receipts" in " ".join(told.output.split()), told.output
