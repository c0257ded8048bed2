"""Values the services' messages cannot carry are refused by the CLI with a usage error (exit 2), before
any service is asked; a `--remember` file that holds no tree head is named plainly. Before, each was a
protobuf or JSON traceback."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from typer.testing import CliRunner

from services.cli.main import app
from tests.grpc_stub import serving

runner = CliRunner()


@pytest.mark.parametrize(
    "args",
    [
        ["dlq", "list", "--limit", "0"],
        ["dlq", "list", "--limit", "3000000000"],
        ["dlq", "show", "99999999999:0"],
        ["dlq", "replay", "0:99999999999999999999"],
        ["audit", "verify", "--max-findings", "-1"],
        ["routes", "add", "r", "--partner", "p", "--priority", "3000000000"],
        # 0 is "unset" on the wire, saved as 100: a research route meant to win at 0 lost to a care one at 50
        ["routes", "add", "r", "--partner", "p", "--priority", "0"],
    ],
)
def test_out_of_range_numbers_are_usage_errors(args: list[str]) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "Invalid value" in result.output, result.output  # not "cannot reach"


def test_routes_test_and_preview_say_a_file_cannot_be_read_without_echoing_its_path(tmp_path: Path) -> None:
    """click's own check printed the whole path, and folder names of exported studies carry patients'
    names ("DOE^JOHN_1961/ct.dcm")."""
    missing = tmp_path / "DOE^JOHN_1961" / "ct.dcm"
    for args in (["routes", "test", str(missing), "--from", "x"], ["profiles", "preview", "basic", str(missing)]):
        result = runner.invoke(app, args)
        assert result.exit_code == 2 and "cannot be read" in result.output, result.output
        assert "DOE^JOHN" not in result.output


@pytest.mark.parametrize("content", ["not json", "{}", '{"tree_size": "x", "root_hash": "zz"}'])
def test_a_remember_file_without_a_tree_head_is_named_plainly(tmp_path: Path, content: str) -> None:
    remember = tmp_path / "head.json"
    remember.write_text(content)
    result = runner.invoke(app, ["audit", "verify", "--remember", str(remember)])
    assert result.exit_code == 2 and "does not hold a tree head" in " ".join(result.output.split()), result.output


def test_audit_verify_that_could_not_run_is_not_reported_as_tampering(monkeypatch: pytest.MonkeyPatch) -> None:
    """A refused token or a deadline exited 1, the status that means TAMPERED: a monitoring job could not
    tell them apart."""

    def refuse(request: bytes, context: grpc.ServicerContext) -> bytes:
        context.abort(grpc.StatusCode.PERMISSION_DENIED, "this token may not verify the log")

    with serving("imx.v1.AuditLog", {"VerifyAuditLog": refuse}) as address:
        monkeypatch.setenv("IMX_AUDIT_GRPC", address)
        monkeypatch.setenv("IMX_CONTROL_TOKEN", "a-token")
        result = runner.invoke(app, ["audit", "verify"])
    assert result.exit_code == 3 and "PERMISSION_DENIED" in result.output, result.output


def test_blobs_gc_keeps_what_delivery_keeps_unless_told_otherwise(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Its default was a hard-wired seven days: with delivery keeping thirty, `imx blobs gc` deleted objects
    delivery still meant to keep."""
    from services.cli.blobs import _retention_s

    monkeypatch.setenv("IMX_BLOB_RETENTION_S", str(30 * 86400))
    assert _retention_s(None) == 30 * 86400
    assert _retention_s(2) == 2 * 86400
    monkeypatch.setenv("IMX_BLOB_RETENTION_S", "a month")
    monkeypatch.setenv("IMX_BLOB_DIR", str(tmp_path))  # a store there is: a fresh checkout has no var/blobs
    result = runner.invoke(app, ["blobs", "gc", "--dry-run"])
    assert result.exit_code == 2 and "give --retention-days" in " ".join(result.output.split()), result.output
    # 0 deleted an instance accepted a second before, which routing had not read yet
    refused = runner.invoke(app, ["blobs", "gc", "--retention-days", "0"])
    assert refused.exit_code == 2 and "--retention-days" in refused.output, refused.output
    monkeypatch.setenv("IMX_BLOB_RETENTION_S", "3600")  # an hour: delivery refuses it, and so does gc
    short = runner.invoke(app, ["blobs", "gc", "--dry-run"])
    assert short.exit_code == 2 and "at least a day" in " ".join(short.output.split()), short.output


def test_a_setting_that_does_not_parse_is_named_without_its_value_or_a_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from services.cli.main import main

    monkeypatch.setenv("IMX_DICOM_PORT", "not-a-port-s3cret")
    monkeypatch.setattr("sys.argv", ["imx", "status"])
    with pytest.raises(SystemExit) as stopped:
        main()
    said = " ".join(capsys.readouterr().err.split())
    assert stopped.value.code == 2 and "bad setting IMX_DICOM_PORT" in said
    assert "s3cret" not in said and "Traceback" not in said


def test_folders_files_and_uris_that_cannot_be_used_are_said_not_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    made = runner.invoke(app, ["demo-data", "--out", str(blocker / "demo")])
    assert made.exit_code == 2 and "cannot write under" in made.output, made.output
    source = tmp_path / "in.dcm"
    source.write_bytes(b"x")
    keyed = runner.invoke(app, ["deid", str(source), str(tmp_path / "out.dcm"), "--key-file", str(blocker / "k.key")])
    assert keyed.exit_code == 2 and "cannot write the key file" in keyed.output, keyed.output
    (tmp_path / "blobs").mkdir()
    monkeypatch.setenv("IMX_BLOB_DIR", str(tmp_path / "blobs"))
    monkeypatch.setenv("IMX_MONGO_URI", "mongodb://admin:S3cretPw@127.0.0.1:notaport/")
    usage = runner.invoke(app, ["blobs", "usage"])
    assert usage.exit_code == 2 and "not a usable MongoDB URI" in usage.output, usage.output
    assert "S3cretPw" not in usage.output


def test_blobs_retention_blames_only_its_own_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    from services.cli.blobs import _retention_s

    monkeypatch.setenv("IMX_PARTNER_TOPIC_PARTITIONS", "abc")  # delivery's, not the retention's business
    monkeypatch.setenv("IMX_DELIVERY_BLOB_RETENTION_S", "86400")
    assert _retention_s(None) == 86400
