"""Exports of the audit trail in the standard's terms: `GET /audit/export/events` and
`GET /audit/export/studies/{study_uid}`, each with `format=json|dicom-xml|fhir`.

`dicom-xml` is one `<AuditMessages>` document of PS3.15 A.5.1 AuditMessages, `fhir` a FHIR R4 Bundle
(type collection) of AuditEvents (IHE BALP); see services/audit/exports.py. `json` is the listing's own
shape. A page of events says where the next one starts in the `imx-next-cursor` header (and, in FHIR, in
the Bundle's `next` link). The router is included by `create_app` behind the analysts' key check; a key's
scope (set on `request.state.analyst` by that check) narrows what is exported exactly as the listings do.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Annotated, Literal, Protocol
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, Response

from services.audit.exports import audit_messages_xml, fhir_bundle_json
from services.audit.models import AuditEvent, EventPageOut
from services.audit.queries import EventFilter, decode_cursor, encode_cursor
from services.audit.query_params import ID_PATTERN, invalid, period
from services.audit.records import AuditRecord, EventType
from services.audit.store import AuditStore
from services.audit.trail import as_is, build_trail, in_order

MAX_LIMIT = 1000
UID_PATTERN = r"^[0-9]+(\.[0-9]+)*$"  # PS3.5 §9.1
NEXT_CURSOR_HEADER = "imx-next-cursor"
Format = Literal["json", "dicom-xml", "fhir"]
FormatQuery = Annotated[Format, Query(description="json, dicom-xml (PS3.15 A.5.1) or fhir (R4 AuditEvent Bundle)")]

export_router = APIRouter()


class RecordScope(Protocol):
    """What an analyst's key may see (services/audit/scopes.py); absent, the key sees everything."""

    def admits(self, record: AuditRecord) -> bool: ...

    def trail(self, study_uid: str, records: Iterable[AuditRecord]) -> list[AuditRecord]: ...

    def readable(self, record: AuditRecord) -> AuditRecord: ...

    def narrow(self, kind: Literal["org", "partner"], asked: str | None) -> str | None: ...


def _store(request: Request) -> AuditStore:
    store: AuditStore = request.app.state.audit_store
    return store


def _scope(request: Request) -> RecordScope | None:
    """The key's scope, set by the router's key check. Without one the request is refused, never answered
    unscoped: a router wired without the check must fail closed."""
    analyst = getattr(request.state, "analyst", None)
    if analyst is None:
        raise HTTPException(status_code=401, detail="an analyst API key is required")
    scope: RecordScope = analyst.scope
    return scope


def _rendered(
    records: Sequence[AuditRecord], fmt: Format, json_body: str, next_cursor: str | None, next_url: str | None
) -> Response:
    headers = {NEXT_CURSOR_HEADER: next_cursor} if next_cursor else {}
    if fmt == "dicom-xml":
        return Response(audit_messages_xml(records), media_type="application/xml", headers=headers)
    if fmt == "fhir":
        return Response(
            fhir_bundle_json(records, next_url=next_url), media_type="application/fhir+json", headers=headers
        )
    return Response(json_body, media_type="application/json", headers=headers)


@export_router.get(
    "/audit/export/events",
    tags=["audit export"],
    responses={200: {"content": {"application/xml": {}, "application/fhir+json": {}}}},
)
def export_events(
    request: Request,
    store: Annotated[AuditStore, Depends(_store)],
    scope: Annotated[RecordScope | None, Depends(_scope)],
    format: FormatQuery = "json",
    since: Annotated[datetime | None, Query(description="only events at or after this time")] = None,
    until: Annotated[datetime | None, Query(description="only events before this time")] = None,
    org: Annotated[str | None, Query(max_length=63, pattern=ID_PATTERN, description="sending organisation id")] = None,
    partner: Annotated[str | None, Query(max_length=63, pattern=ID_PATTERN, description="receiving partner id")] = None,
    event_type: Annotated[EventType | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description="events per page")] = 100,
    cursor: Annotated[str | None, Query(max_length=512, description="imx-next-cursor of the previous page")] = None,
) -> Response:
    """A page of `GET /audit/events` (same filters, order and paging) as DICOM audit messages or FHIR
    AuditEvents."""
    since, until = period(since, until)
    if scope is not None:
        org, partner = scope.narrow("org", org), scope.narrow("partner", partner)
    try:
        after = decode_cursor(cursor) if cursor is not None else None
    except ValueError:
        raise invalid("cursor", "cursor is not one this API returned") from None
    page = store.events(
        EventFilter(org=org, partner=partner, event_type=event_type, since=since, until=until), limit, after
    )
    records = page.records if scope is None else [scope.readable(r) for r in page.records]
    next_cursor = encode_cursor(page.next_cursor) if page.next_cursor else None
    next_url = None
    if next_cursor is not None:
        params = {k: v for k, v in request.query_params.items() if k != "cursor"} | {"cursor": next_cursor}
        next_url = f"{request.url.path}?{urlencode(params)}"
    json_body = ""
    if format == "json":
        json_body = EventPageOut(
            events=[AuditEvent.from_record(r) for r in records], next_cursor=next_cursor
        ).model_dump_json()
    return _rendered(records, format, json_body, next_cursor, next_url)


@export_router.get(
    "/audit/export/studies/{study_uid}",
    tags=["audit export"],
    responses={
        200: {"content": {"application/xml": {}, "application/fhir+json": {}}},
        404: {"description": "nothing is known about this study (within the key's scope)"},
    },
)
def export_study(
    store: Annotated[AuditStore, Depends(_store)],
    scope: Annotated[RecordScope | None, Depends(_scope)],
    study_uid: Annotated[
        str,
        Path(max_length=64, pattern=UID_PATTERN, description="StudyInstanceUID as received, or a de-identified copy's"),
    ],
    format: FormatQuery = "json",
) -> Response:
    """Every record of one study's trail, in the order they happened, as DICOM audit messages or FHIR
    AuditEvents (`json`: the trail of `GET /audit/studies/{study_uid}`)."""
    found = store.study_trail(study_uid)
    admitted = in_order(found if scope is None else scope.trail(study_uid, found))
    if not admitted:
        raise HTTPException(status_code=404, detail="no audit records for this study")
    readable = as_is if scope is None else scope.readable
    json_body = ""
    if format == "json":
        trail = build_trail(study_uid, admitted, readable)
        json_body = trail.model_dump_json() if trail is not None else "{}"
    return _rendered([readable(r) for r in admitted], format, json_body, None, None)
