"""Values the services' messages cannot carry are refused by the CLI with a usage error (exit 2), before
any service is asked; a `--remember` file that holds no tree head is named plainly. Before, each was a
protobuf or JSON traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from services.cli.main import app

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


def test_routes_test_names_a_missing_file_as_a_usage_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["routes", "test", str(tmp_path / "missing.dcm"), "--from", "x"])
    assert result.exit_code == 2 and "does not exist" in result.output


@pytest.mark.parametrize("content", ["not json", "{}", '{"tree_size": "x", "root_hash": "zz"}'])
def test_a_remember_file_without_a_tree_head_is_named_plainly(tmp_path: Path, content: str) -> None:
    remember = tmp_path / "head.json"
    remember.write_text(content)
    result = runner.invoke(app, ["audit", "verify", "--remember", str(remember)])
    assert result.exit_code == 2 and "does not hold a tree head" in " ".join(result.output.split()), result.output
