"""Who may call what on the control plane (services/common/control_roles.py), and how a client finds
its token (services/common/control_channel.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.common.control_auth import bearer_token
from services.common.control_changes import CHANGES, version_of
from services.common.control_channel import MissingControlToken, find_control_token
from services.common.control_roles import OPERATOR_METHODS, Role, is_open, permits, required_role
from services.common.control_tokens import bootstrap_digest
from services.proto_gen.imx.v1 import admin_pb2, control_pb2, profiles_pb2

OPERATOR_CAN = [
    "/imx.v1.Control/Status",
    "/imx.v1.Control/Pause",
    "/imx.v1.Control/Resume",
    "/imx.v1.DeadLetterAdmin/ListDeadLetters",
    "/imx.v1.DeadLetterAdmin/ReplayDeadLetter",
    "/imx.v1.DeadLetterAdmin/DiscardDeadLetter",
    "/imx.v1.PartnerAdmin/PartnerLag",
    "/imx.v1.Studies/StudyStatus",
]
ADMINISTRATOR_ONLY = [
    "/imx.v1.OrganisationAdmin/AddOrganisation",
    "/imx.v1.RoutingAdmin/AddRoute",
    "/imx.v1.RoutingAdmin/ListRoutes",
    "/imx.v1.PartnerAdmin/AddPartner",
    "/imx.v1.PartnerAdmin/ResetPartnerPassword",
    "/imx.v1.ProfileAdmin/AddProfile",
    "/imx.v1.ProfileAdmin/Preview",
    "/imx.v1.AnalystAdmin/AddAnalyst",
    "/imx.v1.ControlTokenAdmin/AddControlToken",
    "/imx.v1.SomethingNew/Method",
]


@pytest.mark.parametrize("method", OPERATOR_CAN)
def test_operators_run_the_pipeline(method: str) -> None:
    assert required_role(method) is Role.operator
    assert permits(Role.operator, method) and permits(Role.administrator, method)


@pytest.mark.parametrize("method", ADMINISTRATOR_ONLY)
def test_configuration_keys_and_unknown_methods_are_for_administrators_only(method: str) -> None:
    assert required_role(method) is Role.administrator
    assert not permits(Role.operator, method) and permits(Role.administrator, method)


def test_only_health_is_open() -> None:
    assert is_open("/grpc.health.v1.Health/Check") and is_open("/grpc.health.v1.Health/Watch")
    assert not is_open("/imx.v1.Control/Status")


def _methods(module: object) -> set[str]:
    descriptor = module.DESCRIPTOR  # type: ignore[attr-defined]
    return {f"/{s.full_name}/{m.name}" for s in descriptor.services_by_name.values() for m in s.methods}


def test_the_tables_name_only_methods_that_exist() -> None:
    served = _methods(admin_pb2) | _methods(control_pb2) | _methods(profiles_pb2)
    assert set(OPERATOR_METHODS) <= served
    assert set(CHANGES) <= served


def test_every_add_remove_reset_replay_discard_pause_resume_and_preview_is_a_recorded_call() -> None:
    """A preview with a partner's key turns an instance's real identity into that partner's pseudonyms:
    it was the one call that undoes de-identification, and it left no record."""
    served = _methods(admin_pb2) | _methods(control_pb2) | _methods(profiles_pb2)
    verbs = ("/Add", "/Remove", "/Reset", "/Replay", "/Discard", "/Pause", "/Resume", "/Preview")
    assert {m for m in served if any(v in m for v in verbs)} == set(CHANGES)


def test_versions_are_the_store_version_or_a_content_digest() -> None:
    assert version_of([]) == ""
    assert version_of([{"_id": "r", "version": 3}]) == "3"
    one, other = version_of([{"_id": "p", "name": "a"}]), version_of([{"_id": "p", "name": "b"}])
    assert one.startswith("sha256:") and one != other


def test_the_bearer_token_is_read_from_the_authorization_header() -> None:
    assert bearer_token([("authorization", "Bearer abc")]) == "abc"
    assert bearer_token([("authorization", "bearer  abc ")]) == "abc"
    assert bearer_token([("authorization", "Basic abc")]) is None
    assert bearer_token([("x-other", "Bearer abc")]) is None
    assert bearer_token(None) is None


def test_a_client_takes_its_token_from_the_environment_then_a_file(tmp_path: Path) -> None:
    assert find_control_token({"IMX_CONTROL_TOKEN": "t1", "HOME": str(tmp_path)}, tmp_path) == "t1"
    named = tmp_path / "named"
    named.write_text("t2\n")
    assert find_control_token({"IMX_CONTROL_TOKEN_FILE": str(named)}, tmp_path) == "t2"
    config = tmp_path / "home" / ".config" / "imx" / "token"
    config.parent.mkdir(parents=True)
    config.write_text("t3")
    assert find_control_token({"HOME": str(tmp_path / "home")}, tmp_path) == "t3"
    devstack = tmp_path / "var" / "secrets" / "control-token"
    devstack.parent.mkdir(parents=True)
    devstack.write_text("t4")
    assert find_control_token({"HOME": str(tmp_path / "nowhere")}, tmp_path) == "t4"


def test_a_client_without_a_token_is_told_where_one_was_looked_for(tmp_path: Path) -> None:
    with pytest.raises(MissingControlToken, match="IMX_CONTROL_TOKEN") as missing:
        find_control_token({"HOME": str(tmp_path)}, tmp_path)
    assert "imx tokens add" in str(missing.value)
    with pytest.raises(MissingControlToken, match="missing or empty"):
        find_control_token({"IMX_CONTROL_TOKEN_FILE": str(tmp_path / "absent")}, tmp_path)
    garbled = tmp_path / "garbled"
    garbled.write_bytes(b"\xff\xfe\x00token")  # not text: a traceback before
    with pytest.raises(MissingControlToken, match="cannot be read"):
        find_control_token({"IMX_CONTROL_TOKEN_FILE": str(garbled)}, tmp_path)


def test_the_bootstrap_file_may_hold_the_token_or_its_digest(tmp_path: Path) -> None:
    token, digest = tmp_path / "token", tmp_path / "digest"
    token.write_text("imx_ctl_abc\n")
    expected = bootstrap_digest(token)
    digest.write_text(f"sha256:{expected}")
    assert bootstrap_digest(digest) == expected and bootstrap_digest(None) is None
    token.write_text("")
    with pytest.raises(ValueError, match="empty"):
        bootstrap_digest(token)
