"""docker-compose.yml: every imx service signs in to Kafka as its own user with its own password, the
users are made by a one-shot set-up service the others wait for, and no Kafka listener lets anyone in
anonymously. There is no Docker engine on these machines, so the file is parsed (with Helm's YAML
parser, see test_helm_chart.py), never run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from services.common.service_access import username
from tests.integration.test_helm_chart import HELM, as_json, converter  # noqa: F401  (converter: a fixture)
from tests.settings_env import GRPC_PORTS, env_names

ROOT = Path(__file__).resolve().parents[2]
SERVICES = list(GRPC_PORTS)
pytestmark = pytest.mark.skipif(HELM is None, reason="helm (the YAML parser here) not found: `make setup` builds it")


@pytest.fixture(scope="module")
def compose(converter: Path) -> dict[str, Any]:  # noqa: F811
    (document,) = as_json((ROOT / "docker-compose.yml").read_text(), converter)
    return document


def _secret_targets(service: dict[str, Any]) -> dict[str, str]:
    """target file name -> compose secret, for the short (name) and long ({source, target}) forms."""
    targets = {}
    for entry in service.get("secrets", []):
        if isinstance(entry, str):
            targets[entry] = entry
        else:
            targets[entry.get("target", entry["source"])] = entry["source"]
    return targets


def test_every_service_signs_in_as_its_own_user_with_only_its_own_password(compose: dict[str, Any]) -> None:
    secrets = compose["secrets"]
    for name in SERVICES:
        service = compose["services"][name]
        env = service["environment"]
        assert env["IMX_KAFKA_SECURITY_PROTOCOL"].startswith("SASL_"), name
        assert env["IMX_KAFKA_SASL_MECHANISM"] == "SCRAM-SHA-512"
        assert env["IMX_KAFKA_SASL_USERNAME"] == username(name)
        assert "IMX_KAFKA_SASL_PASSWORD" not in env, "a file, never a variable"
        password_file = Path(env["IMX_KAFKA_SASL_PASSWORD_FILE"])
        assert password_file.parent == Path("/run/secrets")
        targets = _secret_targets(service)
        assert targets[password_file.name] == f"kafka-{name}"
        assert not [t for t, source in targets.items() if source.startswith("kafka-") and source != f"kafka-{name}"]
        assert secrets[f"kafka-{name}"] == {"environment": f"IMX_KAFKA_{name.upper()}_PASSWORD"}
        assert set(env) <= env_names(name), f"{name}: variables its settings do not read"


def test_the_services_start_after_the_one_shot_setup_made_their_users(compose: dict[str, Any]) -> None:
    setup = compose["services"]["kafka-setup"]
    command = setup["command"]
    assert command[:3] == ["services.cli.main", "kafka", "setup-services"]
    folder = Path(command[command.index("--passwords-dir") + 1])
    assert [command[i + 1] for i, arg in enumerate(command) if arg == "--service"] == SERVICES
    targets = _secret_targets(setup)
    for name in SERVICES:
        assert targets[name] == f"kafka-{name}", "the same secret the service mounts"
    env = setup["environment"]
    assert env["IMX_KAFKA_SASL_USERNAME"] == "admin" and env["IMX_KAFKA_SASL_MECHANISM"] == "PLAIN"
    admin_file = Path(env["IMX_KAFKA_SASL_PASSWORD_FILE"])
    assert admin_file.parent == folder and targets[admin_file.name] == "kafka-admin"
    assert setup["restart"] == "no"
    assert setup["depends_on"]["kafka"]["condition"] == "service_healthy"
    for name in SERVICES:
        depends = compose["services"][name]["depends_on"]
        assert depends["kafka-setup"]["condition"] == "service_completed_successfully", name


def test_no_kafka_listener_is_plaintext_or_has_an_anonymous_super_user(compose: dict[str, Any]) -> None:
    env = compose["services"]["kafka"]["environment"]
    protocols = dict(item.split(":") for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    listeners = {item.split("://")[0] for item in env["KAFKA_LISTENERS"].split(",")}
    assert set(protocols) == listeners
    assert protocols["INTERNAL"] == "SASL_PLAINTEXT"
    assert all(protocol.startswith("SASL_") for protocol in protocols.values()), protocols
    assert "ANONYMOUS" not in env["KAFKA_SUPER_USERS"]
    assert env["KAFKA_SUPER_USERS"] == "User:admin"
    assert env["KAFKA_ALLOW_EVERYONE_IF_NO_ACL_FOUND"] == "false"
    assert env["KAFKA_LISTENER_NAME_INTERNAL_SASL_ENABLED_MECHANISMS"] == "PLAIN,SCRAM-SHA-512"
    # PLAIN knows one user, the admin, whose password comes from the variable the set-up secret reads.
    jaas = env["KAFKA_LISTENER_NAME_INTERNAL_PLAIN_SASL_JAAS_CONFIG"]
    assert 'username="admin"' in jaas and "${IMX_KAFKA_ADMIN_PASSWORD" in jaas
    assert [key for key in jaas.split() if key.startswith("user_")] == ['user_admin="${IMX_KAFKA_ADMIN_PASSWORD}";']
    assert compose["secrets"]["kafka-admin"] == {"environment": "IMX_KAFKA_ADMIN_PASSWORD"}
    assert "$$IMX_KAFKA_ADMIN_PASSWORD" in " ".join(compose["services"]["kafka"]["healthcheck"]["test"])
