"""How the devstack's supervisor reads its command line (tools/devstack/supervise.py)."""

from __future__ import annotations

import pytest

from tools.devstack.supervise import parse_args


def test_a_name_an_optional_niceness_and_the_service_s_command() -> None:
    assert parse_args(["ingest", "--", "python", "-m", "x"]) == ("ingest", 0, ["python", "-m", "x"])
    assert parse_args(["deid", "--nice", "5", "--", "python"]) == ("deid", 5, ["python"])
    assert parse_args(["svc", "--", "cmd", "--", "arg"]) == ("svc", 0, ["cmd", "--", "arg"])  # the service's own --


@pytest.mark.parametrize(
    "args",
    [["svc"], ["svc", "--"], ["svc", "--nice", "5", "--"], ["svc", "x", "--", "cmd"], ["svc", "--nice", "--", "cmd"]],
)
def test_anything_else_is_refused_with_the_usage(args: list[str]) -> None:
    with pytest.raises(ValueError, match="usage:"):
        parse_args(args)
