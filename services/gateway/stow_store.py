"""The DICOMweb target: STOW-RS (PS3.18 10.5), one instance per request, streamed from the file.

The answer is read per instance (PS3.18 10.5.3, Table 10.5.3-1 Store Instances Response Module):
an instance is stored only when the response lists it in the Referenced SOP Sequence (0008,1199);
one listed in the Failed SOP Sequence (0008,1198) failed with its Failure Reason (0008,1197). So a
202 or 409 with a partial failure is never taken for success.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx

from services.gateway.fetched import Fetched
from services.gateway.targets import ABORTED, DicomWebTarget, StoreResult, TargetKind
from services.proto_gen.imx.v1 import events_pb2

FAILED_SOP_SEQUENCE = "00081198"
REFERENCED_SOP_SEQUENCE = "00081199"
REFERENCED_SOP_INSTANCE_UID = "00081155"
FAILURE_REASON = "00081197"
WARNING_REASON = "00081196"
_CHUNK = 256 * 1024


def _values(dataset: dict[str, Any], tag: str) -> list[Any]:
    element = dataset.get(tag)
    if not isinstance(element, dict):
        return []
    value = element.get("Value")
    return value if isinstance(value, list) else []


def _first(dataset: dict[str, Any], tag: str) -> Any:
    values = _values(dataset, tag)
    return values[0] if values else None


def instance_result(body: dict[str, Any], sop_instance_uid: str) -> StoreResult | None:
    """What a Store Instances Response (DICOM JSON, PS3.18 F.2) says about one instance; None when
    the response does not mention it."""
    for item in _values(body, FAILED_SOP_SEQUENCE):
        if isinstance(item, dict) and _first(item, REFERENCED_SOP_INSTANCE_UID) == sop_instance_uid:
            reason = _first(item, FAILURE_REASON)
            if isinstance(reason, int):
                # PS3.18 Table 10.5.3-2 uses the C-STORE codes: 0xA7xx is out of resources.
                return StoreResult.failed(f"0x{reason:04X}", retryable=0xA700 <= reason <= 0xA7FF)
            return StoreResult.failed("failed-sop", retryable=False)
    for item in _values(body, REFERENCED_SOP_SEQUENCE):
        if isinstance(item, dict) and _first(item, REFERENCED_SOP_INSTANCE_UID) == sop_instance_uid:
            warning = _first(item, WARNING_REASON)
            return StoreResult.stored(f"0x{warning:04X}" if isinstance(warning, int) else "stored")
    return None


MISCONFIGURED = frozenset({401, 403, 404, 405, 407})  # about the endpoint and its access, not one instance


def response_result(status_code: int, content: bytes, sop_instance_uid: str) -> StoreResult:
    """The outcome of one STOW-RS request for one instance, from its HTTP status and body."""
    body: dict[str, Any] = {}
    if content.strip():
        try:
            parsed = json.loads(content)
        except ValueError:
            parsed = None
        # A DICOM JSON response is an array of one data set in some servers, the data set in others.
        if isinstance(parsed, list) and parsed and isinstance(parsed[0], dict):
            body = parsed[0]
        elif isinstance(parsed, dict):
            body = parsed
    mentioned = instance_result(body, sop_instance_uid) if body else None
    if 200 <= status_code < 300:
        if mentioned is not None:
            return mentioned
        if not content.strip():
            return StoreResult.stored(f"http-{status_code}")  # a server that answers with no body
        if not body:
            if b"<html" in content[:1024].lower():
                # A web page, not a STOW-RS answer: a sign-in proxy or a wrong base path answering 200.
                return StoreResult.down(f"http-{status_code}-html-answer")
            return StoreResult.stored(f"http-{status_code}-unread-answer")  # e.g. DICOM XML: HTTP says stored
        return StoreResult.failed("not-in-response", retryable=False)
    if mentioned is not None and not mentioned.ok:
        return mentioned  # e.g. 409 Conflict with the instance's own failure reason
    if status_code in MISCONFIGURED or 300 <= status_code < 400:
        # The target as configured refuses everyone (a key missing or refused, a wrong base path, an http
        # URL moved to https): waited for until the partner fixes it, not every instance dead-lettered.
        return StoreResult.down(f"http-{status_code}")
    retryable = status_code >= 500 or status_code in (408, 429)
    return StoreResult.failed(f"http-{status_code}", retryable=retryable)


def _envelope(boundary: str) -> tuple[bytes, bytes]:
    head = f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    return head, tail


def _body(source: Fetched, head: bytes, tail: bytes) -> Iterator[bytes]:
    yield head
    with source.open() as handle:
        while chunk := handle.read(_CHUNK):
            yield chunk
    yield tail


class StowStore:
    kind: TargetKind = "dicomweb"

    def __init__(
        self, target: DicomWebTarget, client: httpx.Client | None = None, headers: dict[str, str] | None = None
    ) -> None:
        self._target = target
        self._client = client or httpx.Client(timeout=httpx.Timeout(60.0, connect=10.0))
        self._headers = dict(headers or {})

    def store(self, source: Fetched, delivery: events_pb2.PartnerDelivery) -> StoreResult:
        boundary = uuid.uuid4().hex
        head, tail = _envelope(boundary)
        headers = {
            **self._headers,
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "Accept": "application/dicom+json",
            "Accept-Encoding": "identity",  # a body said to be compressed and not would be an error, not an answer
            # A known length: some servers (Orthanc's among them) do not take chunked uploads.
            "Content-Length": str(len(head) + source.size + len(tail)),
        }
        for fresh_connection in (False, True):
            try:
                response = self._client.post(self._target.stow_url, content=_body(source, head, tail), headers=headers)
                break
            except (httpx.ConnectTimeout, httpx.PoolTimeout):  # never reached: the target is away
                return StoreResult.down("connect-timeout")
            except httpx.TimeoutException:  # reached, no answer: it may be this instance it cannot take
                return StoreResult.failed("http-timeout", retryable=True)
            except httpx.ConnectError:
                return StoreResult.down("connection-failed")
            except httpx.TransportError:
                # Reached, then the connection was closed or reset: a kept-alive one the server had closed
                # (sent once more, on a new one); a front end whose server is away (docker-proxy, a TCP
                # proxy: it takes connections and closes them), waited for; or a server that answers
                # other requests and fails on this instance, which spends a few attempts (waited for as
                # "away", it held the partner's whole feed for ever). Told apart by asking it something.
                if fresh_connection:
                    return (
                        StoreResult.failed(ABORTED, retryable=True)
                        if self._answers()
                        else StoreResult.down("connection-lost")
                    )
            except httpx.DecodingError:  # an answer said to be compressed that is not
                return StoreResult.failed("http-undecodable", retryable=True)
        if response.status_code in (502, 503):  # the server, or a proxy in front of it saying it is away
            return StoreResult.down(f"http-{response.status_code}")
        # A 504 (a proxy that gave up waiting) came after the instance was sent: as a read timeout, it may be
        # this instance the server cannot take, so it spends attempts (response_result: a 5xx).
        return response_result(response.status_code, response.content, delivery.instance.sop_instance_uid)

    def _answers(self) -> bool:
        """Whether the target answers HTTP at all: any status to an OPTIONS of its STOW-RS URL."""
        try:
            self._client.request("OPTIONS", self._target.stow_url, headers=self._headers, timeout=10.0)
        except httpx.HTTPError:
            return False
        return True

    def close(self) -> None:
        self._client.close()
