"""`imx status`'s pure parts: health words, one row per service, partners near retention."""

from __future__ import annotations

from services.cli.status import ServiceState, health_word, near_retention, row
from services.proto_gen.imx.v1 import admin_pb2, control_pb2


def test_health_is_the_served_status_or_unreachable() -> None:
    assert health_word("SERVING") == "SERVING"
    assert health_word("NOT_SERVING") == "NOT_SERVING"
    assert health_word("no answer (UNAVAILABLE)") == "unreachable"


def test_a_row_shows_paused_processed_failed_and_the_total_lag() -> None:
    reply = control_pb2.StatusReply(
        service="deid",
        paused=True,
        processed=1234,
        failed=2,
        lag=[control_pb2.PartitionLag(topic="t", partition=0, lag=5), control_pb2.PartitionLag(topic="t", lag=7)],
    )
    cells = row(ServiceState("deid", "a:1", "NOT_SERVING", reply))
    assert cells[0] == "deid" and "NOT_SERVING" in cells[1] and "yes" in cells[2]
    assert (cells[3], cells[5]) == ("1,234", "12") and "2" in cells[4]


def test_a_row_without_status_says_why() -> None:
    cells = row(ServiceState("audit", "a:1", "SERVING", None, "UNAUTHENTICATED"))
    assert cells[2:6] == ["-", "-", "-", "-"] and cells[6] == "UNAUTHENTICATED"


def test_an_unreachable_service_names_the_address_nothing_answered_at() -> None:
    cells = row(ServiceState("routing", "127.0.0.1:15052", "unreachable", None))
    assert cells[6] == "nothing answers at 127.0.0.1:15052"


def test_partners_near_retention_or_already_losing_messages_are_listed() -> None:
    backlogs = [
        admin_pb2.PartnerBacklog(partner_id="calm", retention_used=0.1),
        admin_pb2.PartnerBacklog(partner_id="close", retention_used=0.85),
        admin_pb2.PartnerBacklog(partner_id="lost", retention_used=0.2, expired=3),
    ]
    assert [b.partner_id for b in near_retention(backlogs, 0.8)] == ["close", "lost"]


def test_the_central_gateways_may_be_absent_unless_their_address_was_given(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """docker compose and the chart run no central gateways: `imx status` said "unreachable" and exited 1
    on every healthy deployment of either."""
    from services.cli.settings import CliSettings
    from services.cli.status import required

    monkeypatch.delenv("IMX_GATEWAYS_GRPC", raising=False)
    assert not required("gateways", CliSettings()) and required("ingest", CliSettings())
    away = ServiceState("gateways", "127.0.0.1:15056", "unreachable", None, required=False)
    assert not away.failing and "not running" in row(away)[1] and "IMX_GATEWAYS_GRPC" in row(away)[6]
    assert ServiceState("gateways", "x:1", "NOT_SERVING", None, required=False).failing  # running and unwell
    monkeypatch.setenv("IMX_GATEWAYS_GRPC", "gw.internal:15056")
    assert required("gateways", CliSettings())
    assert ServiceState("gateways", "gw.internal:15056", "unreachable", None, required=True).failing
