"""STOW-RS answers read per instance (PS3.18 10.5.3): a partial failure is never success."""

from __future__ import annotations

import json

import httpx
import pytest

from services.gateway.fetched import Fetched
from services.gateway.stow_store import StowStore, response_result
from services.gateway.targets import DicomWebTarget
from services.proto_gen.imx.v1 import events_pb2

SOP = "1.2.3.4"
OTHER = "1.2.3.5"


def _item(sop: str, **extra: object) -> dict[str, object]:
    item: dict[str, object] = {
        "00081150": {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.2"]},
        "00081155": {"vr": "UI", "Value": [sop]},
    }
    for tag, value in extra.items():
        item[tag] = {"vr": "US", "Value": [value]}
    return item


def _body(referenced: list[dict[str, object]] = (), failed: list[dict[str, object]] = ()) -> bytes:  # type: ignore[assignment]
    body: dict[str, object] = {}
    if referenced:
        body["00081199"] = {"vr": "SQ", "Value": list(referenced)}
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": list(failed)}
    return json.dumps(body).encode()


def test_an_instance_in_the_referenced_sequence_is_stored() -> None:
    result = response_result(200, _body([_item(SOP)]), SOP)
    assert result.ok and result.status_detail == "stored"


def test_a_warning_reason_is_still_stored_and_kept_as_the_detail() -> None:
    result = response_result(202, _body([_item(SOP, **{"00081196": 0xB000})]), SOP)
    assert result.ok and result.status_detail == "0xB000"


def test_a_202_that_lists_the_instance_as_failed_is_a_failure_with_its_reason() -> None:
    result = response_result(202, _body([_item(OTHER)], [_item(SOP, **{"00081197": 0xC000})]), SOP)
    assert not result.ok and result.status_detail == "0xC000" and not result.retryable


def test_out_of_resources_in_the_failed_sequence_is_retryable() -> None:
    result = response_result(409, _body(failed=[_item(SOP, **{"00081197": 0xA700})]), SOP)
    assert not result.ok and result.retryable and result.status_detail == "0xA700"


def test_a_409_with_a_permanent_reason_is_not_retryable() -> None:
    result = response_result(409, _body(failed=[_item(SOP, **{"00081197": 0x0122})]), SOP)
    assert (result.ok, result.retryable, result.status_detail) == (False, False, "0x0122")


def test_a_2xx_that_does_not_mention_the_instance_is_not_success() -> None:
    assert not response_result(200, _body([_item(OTHER)]), SOP).ok


def test_a_json_array_of_one_response_data_set_is_read_too() -> None:
    body = json.dumps([json.loads(_body([_item(SOP)]))]).encode()
    assert response_result(200, body, SOP).ok


def test_http_errors_server_side_and_throttling_are_retryable_client_side_not() -> None:
    assert response_result(500, b"", SOP).retryable
    assert response_result(429, b"", SOP).retryable
    assert not response_result(400, b"", SOP).retryable
    assert not response_result(415, b"<html>", SOP).retryable
    assert response_result(404, b"", SOP).status_detail == "http-404"


@pytest.mark.parametrize("status", [401, 403, 404, 405, 407, 301, 308])
def test_a_target_refusing_everyone_is_waited_for_not_every_instance_dead_lettered(status: int) -> None:
    """A key missing or refused, a wrong base path, http moved to https: each instance was dead-lettered
    after one attempt, draining the whole feed into dead letters until the partner noticed."""
    result = response_result(status, b"", SOP)
    assert (result.ok, result.unavailable, result.status_detail) == (False, True, f"http-{status}")


def test_a_success_whose_body_is_not_dicom_json_is_stored() -> None:
    """The instance was stored (HTTP 200) but dead-lettered as not-in-response, and a replay stored it again."""
    for body in (b"<ok/>", b"{}", b"stored"):
        result = response_result(200, body, SOP)
        assert result.ok and result.status_detail == "http-200-unread-answer", body


def test_a_web_page_answering_200_is_waited_for_not_stored() -> None:
    """A sign-in proxy or a wrong base path answering 200 with a page: not a STOW-RS answer."""
    result = response_result(200, b"<!DOCTYPE html><html><body>Sign in</body></html>", SOP)
    assert (result.ok, result.unavailable, result.status_detail) == (False, True, "http-200-html-answer")


def _answer_of(handler: object) -> tuple[str, bool, bool]:
    client = httpx.Client(transport=httpx.MockTransport(handler))  # type: ignore[arg-type]
    delivery = events_pb2.PartnerDelivery(instance=events_pb2.InstanceRef(sop_instance_uid=SOP))
    result = StowStore(DicomWebTarget("http://pacs.test/dicomweb"), client).store(Fetched(data=b"x"), delivery)
    return result.status_detail, result.retryable, result.unavailable


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        # Never reached, or a proxy in front of it saying it is away: waited for, no attempt spent.
        ("connect-timeout", ("connect-timeout", True, True)),
        (502, ("http-502", True, True)),
        (503, ("http-503", True, True)),
        # Reached and no answer (a read timeout, or a proxy's 504 after the instance went): perhaps this
        # instance it cannot take, so attempts are spent.
        ("read-timeout", ("http-timeout", True, False)),
        (504, ("http-504", True, False)),
        (500, ("http-500", True, False)),
    ],
)
def test_a_target_that_is_away_is_waited_for_and_one_that_chokes_spends_attempts(
    answer: object, expected: tuple[str, bool, bool]
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if answer == "connect-timeout":
            raise httpx.ConnectTimeout("no connection", request=request)
        if answer == "read-timeout":
            raise httpx.ReadTimeout("no answer", request=request)
        assert isinstance(answer, int)
        return httpx.Response(answer)

    assert _answer_of(handler) == expected


def test_a_connection_closed_after_the_instance_went_spends_attempts_and_is_sent_once_more_first() -> None:
    """A server that takes the upload and drops the connection (its handler fails on this instance) was
    waited for as "away", resent every 30 s for ever, and held the partner's whole feed. A kept-alive
    connection the server had closed is sent once more on a new one."""
    sent: list[int] = []

    def closing(request: httpx.Request) -> httpx.Response:
        if request.method == "OPTIONS":
            return httpx.Response(405)  # it answers other requests: this instance is what fails
        sent.append(len(request.read()))
        raise httpx.RemoteProtocolError("Server disconnected without sending a response.", request=request)

    assert _answer_of(closing) == ("aborted", True, False) and len(sent) == 2

    def front_end_without_server(request: httpx.Request) -> httpx.Response:
        """docker-proxy or a TCP proxy whose PACS is away: every connection taken and closed."""
        raise httpx.RemoteProtocolError("Server disconnected without sending a response.", request=request)

    assert _answer_of(front_end_without_server) == ("connection-lost", True, True), "waited for, no attempt spent"
    sent.clear()

    def stale_then_answered(request: httpx.Request) -> httpx.Response:
        sent.append(len(request.read()))
        if len(sent) == 1:
            raise httpx.ReadError("connection reset", request=request)
        return httpx.Response(200, content=_body([_item(SOP)]))

    assert _answer_of(stale_then_answered)[0] == "stored" and len(sent) == 2

    def refused(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    assert _answer_of(refused) == ("connection-failed", True, True)


def test_an_answer_said_to_be_compressed_that_is_not_fails_the_attempt_and_is_never_asked_for() -> None:
    """httpx raised DecodingError out of the store, which ended `imx gateway run` with a traceback."""
    asked: list[str] = []

    def broken_gzip(request: httpx.Request) -> httpx.Response:
        asked.append(request.headers["accept-encoding"])
        return httpx.Response(200, headers={"Content-Encoding": "gzip"}, content=b"not gzip at all")

    assert _answer_of(broken_gzip) == ("http-undecodable", True, False) and asked == ["identity"]
