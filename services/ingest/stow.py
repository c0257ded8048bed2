"""STOW-RS (PS3.18 10.5): the HTTP door into ingest, plus a liveness probe.

Each body part goes through the same acceptance core as C-STORE, as soon as it has arrived.
Acceptance blocks on MongoDB and Kafka, so it runs in the thread pool, never on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Protocol

from fastapi import Depends, FastAPI, Header, HTTPException, Request
from fastapi.responses import JSONResponse
from pymongo.errors import PyMongoError
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from services.common.http_server import FASTAPI_TELEMETRY_OFF
from services.ingest.acceptance import Acceptance, Channel, Expected, check_destination
from services.ingest.errors import IngestUnavailable, InvalidDestination
from services.ingest.multipart_related import (
    MalformedMultipart,
    Part,
    RelatedPartsReader,
    SpillFile,
    UnsupportedMediaType,
    boundary_of,
    discard,
)
from services.ingest.received_files import ReceivedFiles
from services.ingest.status_codes import OUT_OF_RESOURCES, PROCESSING_FAILURE
from services.ingest.stow_response import DICOM_JSON, InstanceOutcome, http_status, outcome_of, response_body
from services.ingest.upload_slots import SERVICE, UploadSlots

log = logging.getLogger(__name__)

CHANNEL: Channel = "stow-rs"
DESTINATION_HEADER = "X-IMX-Destination"
DEFAULT_UPLOADS_PER_ORG = 8
# Instances one request may carry: each part's outcome is kept for the answer, so a body of millions of
# tiny parts would otherwise grow the process without bound. A large study (thousands) fits.
DEFAULT_MAX_PARTS = 10_000
# What a refused sender is told to wait: uploads finish in seconds, so a short wait usually finds a slot.
BUSY_RETRY_AFTER_S = 5
UNAVAILABLE_RETRY_AFTER_S = 30  # a dependency away: as the answer to a part refused for now (A700)


class ApiKeys(Protocol):
    def org_for_api_key(self, api_key: str) -> str | None: ...


@dataclass(frozen=True)
class StowContext:
    acceptance: Acceptance
    api_keys: ApiKeys
    # Longest wait for the next piece of a request body: a client that sent its headers and stopped
    # would otherwise hold its connection (and a worker's buffers) for ever.
    body_timeout_s: float = 30.0
    # Uploads one organisation may have open at once; the next one is refused 429 with Retry-After.
    uploads: UploadSlots = field(default_factory=lambda: UploadSlots(DEFAULT_UPLOADS_PER_ORG))
    max_parts: int = DEFAULT_MAX_PARTS
    # A new file for a part over multipart_related.SPILL_OVER_BYTES, in the blob folder (acceptance moves it
    # into the store); None: every part in memory.
    spill: Callable[[], SpillFile] | None = None


def stow_spill_files(folder: Path) -> Callable[[], SpillFile]:
    """Files for large parts in `folder` (the blob folder: a part stored is renamed into the store), named
    `.tmp-stow-...` so the store's sweep removes any a killed process left (blob_lifecycle)."""
    files = ReceivedFiles(folder, ".tmp-stow-")
    return lambda: files(suffix=".dcm")


class TooManyParts(Exception):
    """The request carries more instances than `StowContext.max_parts`."""


def _context(request: Request) -> StowContext:
    context: StowContext = request.app.state.stow
    return context


Context = Annotated[StowContext, Depends(_context)]


def _source_org(context: Context, authorization: Annotated[str | None, Header()] = None) -> str:
    """The organisation behind `Authorization: Bearer <api key>` (a sync dependency: runs in the pool)."""
    scheme, _, key = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise HTTPException(
            401, "an API key is required: Authorization: Bearer <key>", headers={"WWW-Authenticate": "Bearer"}
        )
    try:
        org = context.api_keys.org_for_api_key(key.strip())
    except PyMongoError:
        raise HTTPException(
            503,
            "organisation store unavailable; try again later",
            headers={"Retry-After": str(UNAVAILABLE_RETRY_AFTER_S)},
        ) from None
    if org is None:
        raise HTTPException(401, "API key not recognised", headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
    return org


def _destination(x_imx_destination: Annotated[str | None, Header()] = None) -> str:
    try:
        return check_destination(x_imx_destination)
    except InvalidDestination as exc:
        raise HTTPException(400, f"{DESTINATION_HEADER}: {exc}") from None


SourceOrg = Annotated[str, Depends(_source_org)]
Destination = Annotated[str, Depends(_destination)]


def _store_part(context: StowContext, part: Part, org: str, destination: str, study_uid: str | None) -> InstanceOutcome:
    try:
        # A part over the limit is quarantined unread, which publishes too: inside the try, or a broker
        # outage made the whole request a 500 and lost the outcomes of the parts before it.
        if part.too_large:
            return outcome_of(context.acceptance.reject_unread(org, CHANNEL, part.size))
        if part.unwritten:
            raise IngestUnavailable("stow-rs part not written whole")
        expected = Expected(study_uid=study_uid or "")
        if part.path is not None:  # moved into the store when stored; else removed below
            return outcome_of(context.acceptance.accept_file(part.path, org, CHANNEL, destination, expected))
        return outcome_of(context.acceptance.accept(part.data, org, CHANNEL, destination, expected))
    except IngestUnavailable:
        log.warning("instance not stored: dependency unavailable", extra={"org": org, "channel": CHANNEL})
        return InstanceOutcome(failure_reason=OUT_OF_RESOURCES)
    except Exception:  # a bug must not take the whole request down with it; the type is logged, not the text
        log.exception("instance not stored: unexpected failure", extra={"org": org, "channel": CHANNEL})
        return InstanceOutcome(failure_reason=PROCESSING_FAILURE)
    finally:
        discard([part])


async def _store(
    request: Request, context: StowContext, org: str, destination: str, study_uid: str | None
) -> JSONResponse:
    with context.uploads.hold(org) as full:
        if full is None:
            return await _store_held(request, context, org, destination, study_uid)
    if full == SERVICE:
        status, detail = 503, f"the service already has {context.uploads.total} uploads open; retry later"
    else:
        status, detail = 429, f"this organisation already has {context.uploads.per_org} uploads open; retry later"
    log.warning("stow-rs upload refused: a cap of uploads open is reached", extra={"org": org, "status": status})
    return JSONResponse(
        {"detail": detail},
        status_code=status,
        # Answered before the body is read: the server reads the rest and drops it (http_server's drain), so a
        # client that sends its whole body before it reads finds this answer instead of a reset connection.
        headers={"Retry-After": str(BUSY_RETRY_AFTER_S)},
    )


async def _store_held(
    request: Request, context: StowContext, org: str, destination: str, study_uid: str | None
) -> JSONResponse:
    try:
        reader = RelatedPartsReader(
            boundary_of(request.headers.get("content-type")), context.acceptance.max_instance_bytes, context.spill
        )
    except UnsupportedMediaType as exc:
        raise HTTPException(415, str(exc)) from None
    except MalformedMultipart as exc:
        raise HTTPException(400, str(exc)) from None
    outcomes: list[InstanceOutcome] = []
    unavailable = False

    async def store(parts: list[Part]) -> None:
        nonlocal unavailable
        try:
            for part in parts:
                if len(outcomes) >= context.max_parts:
                    raise TooManyParts
                if unavailable:  # fail the rest fast instead of waiting out a timeout for each part
                    outcomes.append(InstanceOutcome(failure_reason=OUT_OF_RESOURCES))
                    continue
                outcome = await run_in_threadpool(_store_part, context, part, org, destination, study_uid)
                unavailable = outcome.failure_reason == OUT_OF_RESOURCES
                outcomes.append(outcome)
        finally:
            discard(parts)  # the files of parts not taken (a part taken was moved into the store or removed)

    chunks = request.stream()
    try:
        while True:
            try:
                chunk = await asyncio.wait_for(anext(chunks), context.body_timeout_s)
            except StopAsyncIteration:
                break
            await store(reader.feed(chunk))
        await store(reader.close())
    except MalformedMultipart as exc:
        # Parts completed before the error stay stored; a client resending the request gets them as duplicates.
        raise HTTPException(400, str(exc)) from None
    except TimeoutError:
        log.warning(
            "stow-rs body not received in time; closing",
            extra={"org": org, "instances": len(outcomes), "seconds": context.body_timeout_s},
        )
        return JSONResponse(
            {"detail": f"no request body received for {context.body_timeout_s:g} s"},
            status_code=408,
            headers={"Connection": "close"},
        )
    except TooManyParts:
        # The parts before stay stored (sent again, they are duplicates); what follows is not stored.
        log.warning("stow-rs request over its instance limit", extra={"org": org, "instances": len(outcomes)})
        # The first parts' outcomes, as any answer gives them: a client told only "send the rest" never
        # learnt that some of the first were refused, or refused for now (A700), and dropped them.
        warning = (
            f"299 imx: at most {context.max_parts} instances per request: the first {context.max_parts} were "
            "handled as this answer says, the rest not stored: send them in another request"
        )
        return JSONResponse(
            response_body(outcomes),
            # No "Connection: close": the server then drains what is still coming (as for the 429), so a
            # client that sends its whole body before it reads gets this answer, not a reset connection.
            status_code=413,
            media_type=DICOM_JSON,
            headers={"Warning": warning},
        )
    except ClientDisconnect:  # the client went away mid-body: no one to answer, nothing to report
        log.info("stow-rs client disconnected", extra={"org": org, "instances": len(outcomes)})
        return JSONResponse({"detail": "client disconnected"}, status_code=400)
    finally:
        reader.discard()  # a part being written to its file when the body failed or ended
    status = http_status(outcomes)
    log.info("stow-rs request", extra={"org": org, "instances": len(outcomes), "status": status})
    headers = {"Retry-After": str(UNAVAILABLE_RETRY_AFTER_S)} if status == 503 else None
    return JSONResponse(response_body(outcomes), status_code=status, media_type=DICOM_JSON, headers=headers)


# The body is read as a stream, so FastAPI cannot infer it: describe it for the OpenAPI document.
_STOW_OPENAPI = {
    "requestBody": {
        "required": True,
        "content": {'multipart/related; type="application/dicom"': {"schema": {"type": "string", "format": "binary"}}},
    },
    "responses": {
        "200": {"description": "every instance stored (ReferencedSOPSequence)"},
        "202": {"description": "some instances failed (FailedSOPSequence with FailureReason)"},
        "400": {"description": "malformed multipart body"},
        "413": {
            "description": "more instances than one request may carry (IMX_STOW_MAX_INSTANCES_PER_REQUEST): "
            "the outcomes of the first, as for a 200, 202 or 409; the rest not stored"
        },
        "401": {"description": "missing or unknown API key"},
        "408": {"description": "the body stopped arriving (IMX_STOW_BODY_TIMEOUT_S); the connection is closed"},
        "409": {"description": "no instance stored"},
        "415": {"description": 'not multipart/related; type="application/dicom"'},
        "429": {
            "description": "the organisation already has IMX_STOW_MAX_UPLOADS_PER_ORG uploads open: retry later "
            "(Retry-After); the body sent is read and dropped"
        },
        "503": {
            "description": "a dependency is down, or the service has IMX_STOW_MAX_UPLOADS uploads open: retry "
            "later (Retry-After)"
        },
    },
}


def create_app(context: StowContext) -> FastAPI:
    app = FastAPI(
        title="imx ingest",
        summary="DICOMweb STOW-RS (PS3.18) into the image exchange",
        version="0.1.0",
        telemetry=FASTAPI_TELEMETRY_OFF,
    )
    app.state.stow = context

    @app.api_route("/healthz", methods=["GET", "HEAD"])  # HEAD: uptime checkers probe with it
    async def healthz() -> dict[str, str]:  # on the loop: not queued behind uploads on the thread pool
        return {"status": "ok"}

    @app.post("/dicomweb/studies", response_class=JSONResponse, openapi_extra=_STOW_OPENAPI)
    async def store_instances(
        request: Request, context: Context, org: SourceOrg, destination: Destination
    ) -> JSONResponse:
        """Store instances of any study: multipart/related; type="application/dicom"."""
        return await _store(request, context, org, destination, None)

    @app.post("/dicomweb/studies/{study_uid}", response_class=JSONResponse, openapi_extra=_STOW_OPENAPI)
    async def store_study_instances(
        study_uid: str, request: Request, context: Context, org: SourceOrg, destination: Destination
    ) -> JSONResponse:
        """Store instances of one study; an instance of another study fails with A900 (PS3.18 10.5.3)."""
        return await _store(request, context, org, destination, study_uid)

    return app
