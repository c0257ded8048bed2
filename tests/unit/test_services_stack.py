"""The devstack's replicas (tools/services_stack.py): what IMX_DEVSTACK_REPLICAS asks for, and the ports and
names each replica gets."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.cli.settings import CliSettings
from services.gateway.central import CentralGatewaySettings
from tests.settings_env import SETTINGS
from tools.devstack import EnvironmentProblem, Layout, Ports
from tools.devstack.cli import main as devstack_main
from tools.services_stack import (
    SERVICES,
    Replica,
    connection_env,
    niceness_for,
    parse_replicas,
    plan_replicas,
    stop_patience_for,
)


def every_port(plan: list[Replica]) -> list[int]:
    return [port for r in plan for port in (r.ports.grpc, *(p for _, p in r.ports.other))]


def test_a_replica_spec_names_services_and_counts() -> None:
    assert parse_replicas("") == {}
    assert parse_replicas("routing=2, deid=3,ingest=1") == {"routing": 2, "deid": 3, "ingest": 1}


@pytest.mark.parametrize("spec", ["router=2", "deid=0", "deid=two", "deid"])
def test_a_bad_replica_spec_is_refused_with_the_variable_named(spec: str) -> None:
    with pytest.raises(EnvironmentProblem, match="IMX_DEVSTACK_REPLICAS"):
        parse_replicas(spec)


@pytest.mark.parametrize("single", ["audit", "gateways"])
def test_single_writer_processes_cannot_be_replicated(single: str) -> None:
    assert parse_replicas(f"{single}=1") == {single: 1}
    with pytest.raises(EnvironmentProblem, match="one process"):
        parse_replicas(f"{single}=2")


def test_each_replica_has_its_own_name_and_ports_and_the_first_keeps_the_usual_ones() -> None:
    plan = plan_replicas({"ingest": 2, "routing": 2})
    by_name = {replica.name: replica for replica in plan}
    names = ["ingest", "ingest-2", "routing", "routing-2", "deid", "delivery", "audit", "gateways"]
    assert [r.name for r in plan] == names
    assert by_name["ingest"].ports == SERVICES["ingest"]
    assert by_name["routing-2"].ports.grpc == SERVICES["routing"].grpc + 100
    assert dict(by_name["ingest-2"].ports.other) == {"IMX_HTTP_PORT": 8141, "IMX_DICOM_PORT": 11212}
    ports = every_port(plan)
    assert len(ports) == len(set(ports))


# Linux's default ephemeral range (net.ipv4.ip_local_port_range): any outgoing connection on the host may
# be given a port in it, and a fixed listening port there is then taken until that connection closes.
LINUX_EPHEMERAL = range(32768, 61000)


def test_no_devstack_port_lies_where_the_kernel_hands_out_ports_to_outgoing_connections() -> None:
    plan = plan_replicas({"ingest": 4, "routing": 4, "deid": 4, "delivery": 4})
    inside = sorted(port for port in every_port(plan) if port in LINUX_EPHEMERAL)
    assert inside == [], f"devstack ports in the ephemeral range: {inside}"
    assert not {*vars(Ports()).values()} & {*LINUX_EPHEMERAL}


def test_the_cli_and_each_service_default_to_the_devstack_ports() -> None:
    settings = {**SETTINGS, "gateways": CentralGatewaySettings}
    assert set(settings) == set(SERVICES)
    for name, service_settings in settings.items():
        assert CliSettings.model_fields[f"{name}_grpc"].default == f"127.0.0.1:{SERVICES[name].grpc}", name
        assert service_settings.model_fields["grpc_port"].default == SERVICES[name].grpc, name


def test_the_stages_behind_kafka_yield_the_cores_to_ingest_and_the_gateways() -> None:
    assert {s: niceness_for(s, {}) for s in ("ingest", "routing", "deid", "delivery", "audit", "gateways")} == {
        "ingest": 0,
        "routing": 5,
        "deid": 5,
        "delivery": 5,
        "audit": 5,
        "gateways": 0,
    }
    assert niceness_for("deid", {"IMX_DEVSTACK_STAGE_NICENESS": "0"}) == 0
    assert niceness_for("ingest", {"IMX_DEVSTACK_STAGE_NICENESS": "10"}) == 0


@pytest.mark.parametrize("value", ["-1", "20", "high"])
def test_a_niceness_nice_would_not_take_is_refused_with_the_variable_named(value: str) -> None:
    with pytest.raises(EnvironmentProblem, match="IMX_DEVSTACK_STAGE_NICENESS"):
        niceness_for("deid", {"IMX_DEVSTACK_STAGE_NICENESS": value})


def test_ports_picked_for_tests_and_tools_lie_below_the_outgoing_connections_range(tmp_path: Path) -> None:
    from tools.devstack.processes import free_ports, pickable_ports

    local_range = tmp_path / "ip_local_port_range"
    local_range.write_text("32768\t60999\n")
    assert pickable_ports(local_range) == range(28768, 32768)
    local_range.write_text("2000 60999\n")  # too low to leave a span: never below 1024
    assert pickable_ports(local_range) == range(1024, 2000)
    assert pickable_ports(tmp_path / "missing") == range(28768, 32768)  # Linux's default assumed
    picked = free_ports(20)
    assert len(set(picked)) == 20 and all(port in pickable_ports() for port in picked)


def test_a_port_in_use_is_not_picked_and_too_few_candidates_fall_back_to_the_kernel() -> None:
    import socket

    from tools.devstack.processes import HOST, free_ports

    with socket.socket() as taken:
        taken.bind((HOST, 0))
        taken.listen()
        port = taken.getsockname()[1]
        candidates = range(port, port + 1)
        fallback = free_ports(1, candidates)  # the only candidate is in use: the kernel picks
        assert fallback != [port] and len(fallback) == 1
    assert free_ports(1, candidates) == [port]  # free again once closed


def test_make_stop_gives_ingest_its_grace_for_transfers_in_flight_and_fifteen_seconds_more() -> None:
    """Before, `make stop` killed ingest's supervisor after 30 s: the moment ingest's own 30 s grace for
    open associations ran out, before it could abort them and close its clients."""
    assert stop_patience_for("ingest", {}) == 45.0
    assert stop_patience_for("ingest", {"IMX_SHUTDOWN_GRACE_S": "60"}) == 75.0
    assert stop_patience_for("ingest", {"IMX_SHUTDOWN_GRACE_S": "soon"}) == 45.0  # ingest refuses it anyway
    assert {stop_patience_for(s, {"IMX_SHUTDOWN_GRACE_S": "60"}) for s in SERVICES if s != "ingest"} == {30.0}


def test_devstack_env_gives_a_command_in_the_shell_the_servers_and_sign_in_of_a_service(tmp_path: Path) -> None:
    """What `imx send` needs beside the devstack: its broker takes only signed-in clients."""
    env = connection_env(Layout(tmp_path), Ports(kafka=29192, mongo=29117), "ingest")
    assert env["IMX_KAFKA_BOOTSTRAP"] == "127.0.0.1:29192" and env["IMX_MONGO_URI"].startswith(
        "mongodb://127.0.0.1:29117"
    )
    assert (env["IMX_KAFKA_SECURITY_PROTOCOL"], env["IMX_KAFKA_SASL_USERNAME"]) == ("SASL_PLAINTEXT", "imx-ingest")
    assert Path(env["IMX_KAFKA_SASL_PASSWORD_FILE"]).read_text().strip(), "the password by its file, not in the output"
    assert env["IMX_BLOB_DIR"] == str(tmp_path / "blobs")


def test_devstack_env_says_when_the_devstack_is_not_running_or_the_service_is_unknown(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert devstack_main(["env", "--var-dir", str(tmp_path)]) == 2
    assert "not running; `make up` starts it" in capsys.readouterr().err
    assert devstack_main(["env", "nosuch", "--var-dir", str(tmp_path)]) == 2
    assert "no service 'nosuch'" in capsys.readouterr().err
