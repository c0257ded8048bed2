"""The partner gateway's command line, one builder for the bench and the end-to-end tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tools.bench_partner import gateway_command
from tools.bench_setup import PartnerCredentials

CREDENTIALS = PartnerCredentials("research-a", "s3cret-password", "SASL_PLAINTEXT", "imx_dw_s3cret-key")


def test_the_partners_secrets_are_in_the_environment_never_on_the_command_line() -> None:
    argv, env = gateway_command("research-a", "127.0.0.1:19094", CREDENTIALS, "folder:/tmp/x", Path("/tmp/state"))
    assert not [arg for arg in argv if "s3cret" in arg]
    assert env["IMX_GATEWAY_PASSWORD"] == "s3cret-password"
    assert env["IMX_GATEWAY_DICOMWEB_KEY"] == "imx_dw_s3cret-key"
    assert argv[argv.index("--partner") + 1] == "research-a"
    assert argv[argv.index("--state-dir") + 1] == "/tmp/state"


def test_more_flags_come_last_and_the_topic_prefix_is_inherited_unless_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMX_TOPIC_PREFIX", "inherited.")
    argv, env = gateway_command("p", "127.0.0.1:1", CREDENTIALS, "t", Path("s"), "--max-attempts", "3")
    assert argv[-2:] == ["--max-attempts", "3"]
    assert env["IMX_TOPIC_PREFIX"] == "inherited."
    _, env = gateway_command(
        "p", "127.0.0.1:1", CREDENTIALS, "t", Path("s"), topic_prefix="t1.", env={"COLUMNS": "400"}
    )
    assert (env["IMX_TOPIC_PREFIX"], env["COLUMNS"]) == ("t1.", "400")
