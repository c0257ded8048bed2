"""Who may call which gRPC method of the control plane: the one table of it.

Two roles. An operator runs the pipeline: status, pause, resume, dead letters (list, show, replay, discard),
backlog and study status, the audit log's tamper check. An administrator may do all of that and change
what imx is configured with: organisations, partners, routes, profiles, analysts' keys, control tokens,
and previews that show real values. A method not named here is for administrators only, so a new admin
method is closed until someone decides otherwise. grpc.health.v1 is open to anyone (Kubernetes probes
carry no credential) and is not decided here.
"""

from __future__ import annotations

from enum import StrEnum

HEALTH_PREFIX = "/grpc.health.v1.Health/"


class Role(StrEnum):
    operator = "operator"
    administrator = "administrator"


OPERATOR_METHODS: frozenset[str] = frozenset(
    {
        "/imx.v1.Control/Status",
        "/imx.v1.Control/Pause",
        "/imx.v1.Control/Resume",
        "/imx.v1.DeadLetterAdmin/ListDeadLetters",
        "/imx.v1.DeadLetterAdmin/GetDeadLetter",
        "/imx.v1.DeadLetterAdmin/ReplayDeadLetter",
        "/imx.v1.DeadLetterAdmin/DiscardDeadLetter",
        "/imx.v1.PartnerAdmin/PartnerLag",
        "/imx.v1.Studies/StudyStatus",
        "/imx.v1.AuditLog/GetTreeHead",
        "/imx.v1.AuditLog/VerifyAuditLog",
    }
)


def is_open(method: str) -> bool:
    """Served without a credential: the standard health service only."""
    return method.startswith(HEALTH_PREFIX)


def required_role(method: str) -> Role:
    return Role.operator if method in OPERATOR_METHODS else Role.administrator


def permits(role: Role, method: str) -> bool:
    return role is Role.administrator or required_role(method) is Role.operator
