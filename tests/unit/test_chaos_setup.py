"""`make chaos`'s clean-up: a step that fails says which command shows what it left behind, and the
steps after it are still tried."""

from __future__ import annotations

from services.cli.settings import CliSettings
from tools.chaos_setup import ChaosConfig, unconfigure
from tools.devstack import free_port


def test_each_failed_clean_up_step_names_the_command_that_shows_what_it_left() -> None:
    nowhere = f"127.0.0.1:{free_port()}"  # no service answers: every step fails, UNAVAILABLE
    cli = CliSettings(ingest_grpc=nowhere, routing_grpc=nowhere, delivery_grpc=nowhere, audit_grpc=nowhere)
    config = ChaosConfig("chaos-1", "AE1", "chaos-1-fuzz", "AE2", "key", audit_api_key="analyst-key")
    warnings: list[str] = []
    unconfigure(cli, config, warn=warnings.append)
    assert [w.split("`")[1] for w in warnings] == [
        "imx routes list",
        "imx orgs list",
        "imx partners list",
        "imx analysts list",
    ]
    assert all("UNAVAILABLE" in w for w in warnings)
