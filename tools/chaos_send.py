"""The senders of `make chaos`: a C-STORE SCU that sends data sets as the bytes it is given (pynetdicom
would decode and re-encode, and could not send a broken one), and a STOW-RS client sending one part
per request, both reporting what the door answered and how long it took."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from io import BytesIO
from typing import Any

import httpx
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import AE
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.presentation import PresentationContext, build_context

from services.gateway.dimse_exchange import answer_from_dul

SYNTAXES = (ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian)
SUCCESS, OUT_OF_RESOURCES, PROCESSING_FAILURE = 0x0000, 0xA700, 0x0110
FAILURE_REASON, FAILED_SOP_SEQUENCE, REFERENCED_SOP_SEQUENCE = "00081197", "00081198", "00081199"


@dataclass(frozen=True)
class Answer:
    outcome: str  # "accepted" | "rejected" | "refused" | "retry" | "error"
    reason: str
    seconds: float
    http_status: int = 0


def c_store_outcome(status: int | None, comment: str) -> tuple[str, str]:
    """How the sender reads a C-STORE response status (PS3.4 Table B.2-1, PS3.7 C.4)."""
    if status is None:
        return "error", "no response"
    if status == SUCCESS or status >> 12 == 0xB:  # success, or a warning: stored
        return "accepted", f"{status:04X}"
    if status == OUT_OF_RESOURCES:
        return "retry", f"{status:04X}"
    if status == PROCESSING_FAILURE or not comment:
        return "error", f"{status:04X}"  # a failure with no reason the sender could act on
    return "rejected", f"{status:04X} {comment}"


def stow_outcome(status_code: int, body: Any) -> tuple[str, str]:
    """How the sender reads a STOW-RS answer to a one-part request (PS3.18 10.5.3)."""
    if status_code in (503, 429):
        return "retry", str(status_code)
    if status_code >= 500:
        return "error", str(status_code)
    if status_code == 200:
        return "accepted", "200"
    failed = body.get(FAILED_SOP_SEQUENCE, {}).get("Value", []) if isinstance(body, dict) else []
    reasons = [str(item.get(FAILURE_REASON, {}).get("Value", [""])[0]) for item in failed if isinstance(item, dict)]
    if status_code == 202 and body.get(REFERENCED_SOP_SEQUENCE, {}).get("Value"):
        return "accepted", "202"
    if reasons and all(reasons):
        return "rejected", f"{status_code} {','.join(reasons)}"
    if 400 <= status_code < 500:
        return "rejected", str(status_code)  # the request refused whole, with its status as the reason
    return "error", str(status_code)


class CStoreClient:
    """One association at a time with the SCP, opened again after it is lost."""

    def __init__(
        self, calling_ae: str, host: str, port: int, called_ae: str, sop_classes: list[str], timeout_s: float
    ) -> None:
        self._ae = AE(ae_title=calling_ae)
        self._ae.dimse_timeout = self._ae.acse_timeout = self._ae.network_timeout = timeout_s
        self._ae.connection_timeout = 5
        self._contexts = [build_context(c, [s]) for c in sop_classes for s in SYNTAXES]
        self._host, self._port, self._called = host, port, called_ae
        self._assoc: Any = None
        self._message_id = 0

    def close(self) -> None:
        if self._assoc is not None and self._assoc.is_established:
            self._assoc.release()
        self._assoc = None

    def _context(self, sop_class: str, syntax: str) -> PresentationContext | None:
        for context in self._assoc.accepted_contexts:
            if context.abstract_syntax == sop_class and context.transfer_syntax[0] == syntax:
                return context
        return None

    def send(self, sop_class: str, sop_uid: str, dataset: bytes, syntax: str) -> Answer:
        started = time.monotonic()
        if self._assoc is None or not self._assoc.is_established:
            self._assoc = self._ae.associate(
                self._host, self._port, contexts=self._contexts, ae_title=self._called, max_pdu=131072
            )
            if not self._assoc.is_established:
                self._assoc = None
                return Answer("retry", "association refused or not answered", time.monotonic() - started)
        context = self._context(sop_class, syntax)
        if context is None:
            return Answer("refused", f"no presentation context for {syntax}", time.monotonic() - started)
        self._message_id = self._message_id % 0xFFFF + 1
        request = C_STORE()
        request.MessageID = self._message_id
        request.AffectedSOPClassUID = sop_class
        request.AffectedSOPInstanceUID = sop_uid
        request.Priority = 2
        request.DataSet = BytesIO(dataset)
        assoc = self._assoc
        try:
            # The reactor paused so the response is ours to read (the gateway's fallback when it cannot
            # read the response off the socket itself; a chaos sender needs no more).
            context_id = int(context.context_id or 0)
            response = answer_from_dul(assoc, lambda: assoc.dimse.send_msg(request, context_id))
        except (OSError, RuntimeError, AttributeError):
            self._drop()
            return Answer("error", "connection lost", time.monotonic() - started)
        if response is None:
            self._drop()
            return Answer("error", "no response (association aborted or timed out)", time.monotonic() - started)
        comment = str(getattr(response, "ErrorComment", "") or "")
        outcome, reason = c_store_outcome(getattr(response, "Status", None), comment)
        return Answer(outcome, reason, time.monotonic() - started)

    def _drop(self) -> None:
        if self._assoc is not None and self._assoc.is_established:
            self._assoc.abort()
        self._assoc = None


class StowClient:
    def __init__(self, base_url: str, api_key: str, timeout_s: float) -> None:
        self._client = httpx.Client(timeout=timeout_s)
        self._url, self._key = f"{base_url}/studies", api_key

    def close(self) -> None:
        self._client.close()

    def send(self, part10: bytes) -> Answer:
        boundary = secrets.token_hex(16)
        body = (
            f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
            + part10
            + f"\r\n--{boundary}--\r\n".encode()
        )
        started = time.monotonic()
        try:
            response = self._client.post(
                self._url,
                content=body,
                headers={
                    "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
                    "Accept": "application/dicom+json",
                    "Authorization": f"Bearer {self._key}",
                },
            )
        except httpx.HTTPError as error:
            return Answer("error", type(error).__name__, time.monotonic() - started)
        seconds = time.monotonic() - started
        try:
            parsed: Any = response.json()
        except ValueError:
            parsed = {}
        outcome, reason = stow_outcome(response.status_code, parsed)
        return Answer(outcome, reason, seconds, response.status_code)
