"""The analysts' query API over the audit trail (FastAPI; the store is passed in, nothing is global)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.datastructures import QueryParams
from starlette.types import ASGIApp, Message, Receive, Send
from starlette.types import Scope as AsgiScope

from services.audit.access_log import AccessEntry, AccessLog, storable_params, storable_text
from services.audit.analysts import Analyst
from services.audit.changes_api import ChangeReader, changes_router
from services.audit.export_api import export_router
from services.audit.models import (
    EventPageOut,
    Health,
    PartnerTurnaround,
    QuarantinesOut,
    StageReasonDay,
    StudyTrail,
    Summary,
    TurnaroundOut,
    VolumeOut,
    VolumesOut,
)
from services.audit.queries import EventFilter, PeriodPurged, decode_cursor, encode_cursor
from services.audit.query_params import ID_PATTERN, KEY_PATTERN, aggregate_period, invalid, invalid_request, period
from services.audit.records import EventType
from services.audit.scopes import Scope, ScopeDenied
from services.audit.store import AuditStore
from services.audit.trail import events_json, trail_json
from services.audit.ui import ui_router
from services.common.http_server import FASTAPI_TELEMETRY_OFF
from services.common.messages import TransientError

DESCRIPTION = """\
Who sent which study, how it was routed, which de-identification profile was applied and when it was
delivered, from the events every imx stage publishes. Records hold identifiers (UIDs, organisation,
partner and route ids), profile names and versions, statuses and machine-readable reasons: no PHI.

Times are ISO 8601; give a zone (`Z` or `%2B01:00` in a URL), a time without one is taken as UTC.

A key scoped to one organisation or partner sees only records about it: a study it has no record of is
a 404, a filter naming another organisation or partner is a 403, and so are aggregates not kept per
its kind of scope. With retention set, records and everything derived from them (trails, event pages,
figures) go once past the retention age, a UTC day at a time: a period ending before the first retained
day is a **410 Gone** (`retained_from` says that day), not an empty answer; a period reaching into the
retained days answers for those days only, and a study whose records were all purged is a 404.
Every request is recorded in the access log (DICOM PS3.15 110112 Query, 110101 Audit Log Used).
"""
GONE = {"description": "the period ends before the first retained day: purged by retention (`retained_from`)"}
MAX_LIMIT = 1000
UID_PATTERN = r"^[0-9]+(\.[0-9]+)*$"  # PS3.5 §9.1: digits and dots, at most 64 characters

router = APIRouter()
open_router = APIRouter()  # health only: probes carry no key

UNAVAILABLE_HEADERS = {"Retry-After": "5"}  # the store is away: a client tries again, not at once


def get_store(request: Request) -> AuditStore:
    store: AuditStore = request.app.state.audit_store
    return store


StoreDep = Annotated[AuditStore, Depends(get_store)]
EVERYONE = Analyst("anonymous")  # IMX_AUDIT_REQUIRE_API_KEY=false: the proxy in front decided
Since = Annotated[datetime | None, Query(description="only events at or after this time")]
Until = Annotated[datetime | None, Query(description="only events before this time")]


KeyCheck = Callable[[str], "str | Analyst | None"]


def _authorised(request: Request) -> Analyst:
    """Every audit query needs an analyst's API key (`imx analysts add`): `Authorization: Bearer <key>`.
    A check giving only an analyst id (no scope) means the key sees everything."""
    check: KeyCheck | None = request.app.state.key_check
    if check is None:
        request.state.analyst = EVERYONE
        return EVERYONE  # explicitly open (IMX_AUDIT_REQUIRE_API_KEY=false), e.g. behind an authenticating proxy
    scheme, _, key = request.headers.get("authorization", "").partition(" ")
    holder = check(key.strip()) if scheme.lower() == "bearer" and key.strip() else None
    if holder is None:
        raise HTTPException(
            status_code=401, detail="an analyst API key is required", headers={"WWW-Authenticate": "Bearer"}
        )
    analyst = Analyst(holder) if isinstance(holder, str) else holder
    request.state.analyst = analyst
    return analyst


def _scope(analyst: Annotated[Analyst, Depends(_authorised)]) -> Scope:
    return analyst.scope


ScopeDep = Annotated[Scope, Depends(_scope)]


@router.get(
    "/audit/studies/{study_uid}",
    response_model=StudyTrail,
    tags=["audit"],
    responses={404: {"description": "nothing is known about this study (within the key's scope)"}},
)
def study_trail(
    store: StoreDep,
    scope: ScopeDep,
    study_uid: Annotated[
        str,
        Path(max_length=64, pattern=UID_PATTERN, description="StudyInstanceUID as received, or a de-identified copy's"),
    ],
) -> Response:
    """The trail of one study: received from whom and how, routed where by which route, de-identified
    with which profile and version, delivered when; quarantines and dead letters included. A scoped key
    gets only its organisation's or partner's records, and a 404 where it has none."""
    trail = trail_json(study_uid, scope.trail(study_uid, store.study_trail(study_uid)), scope.readable)
    if trail is None:
        raise HTTPException(status_code=404, detail="no audit records for this study")
    # Serialised once, here: FastAPI would validate the whole trail again against the response model.
    return Response(trail, media_type="application/json")


@router.get(
    "/audit/events",
    response_model=EventPageOut,
    tags=["audit"],
    responses={403: {"description": "outside the key's scope"}, 410: GONE},
)
def list_events(
    store: StoreDep,
    scope: ScopeDep,
    since: Since = None,
    until: Until = None,
    org: Annotated[str | None, Query(max_length=63, pattern=ID_PATTERN, description="sending organisation id")] = None,
    partner: Annotated[str | None, Query(max_length=63, pattern=ID_PATTERN, description="receiving partner id")] = None,
    event_type: Annotated[EventType | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description="events per page")] = 100,
    cursor: Annotated[str | None, Query(max_length=512, description="next_cursor of the previous page")] = None,
) -> Response:
    """Events in the order they happened (then by id), filtered; page with `next_cursor`. A scoped key's
    filter is its own organisation or partner."""
    since, until = period(since, until)
    org, partner = scope.narrow("org", org), scope.narrow("partner", partner)
    try:
        after = decode_cursor(cursor) if cursor is not None else None
    except ValueError:
        raise invalid("cursor", "cursor is not one this API returned") from None
    query = EventFilter(org=org, partner=partner, event_type=event_type, since=since, until=until)
    page = store.events(query, limit, after)
    next_cursor = encode_cursor(page.next_cursor) if page.next_cursor else None
    # EventPageOut as pydantic writes it, the events by events_json (no model per event).
    records = [scope.readable(r) for r in page.records]
    body = b'{"events":' + events_json(records) + b',"next_cursor":' + orjson.dumps(next_cursor) + b"}"
    return Response(body, media_type="application/json")


@router.get(
    "/audit/summary",
    response_model=Summary,
    tags=["audit"],
    responses={403: {"description": "a scoped key asking from before its counts were kept"}, 410: GONE},
)
def summary(store: StoreDep, scope: ScopeDep, since: Since = None, until: Until = None) -> Summary:
    """Counts: events per type, deliveries per partner (delivered and failed), quarantines per reason,
    dead letters per stage. A scoped key gets the counts of the records it sees (its organisation's, or
    its partner's), kept as such from the day the store started keeping them (a 403 before that day)."""
    since, until = aggregate_period(since, until)
    return Summary.from_summary(store.summary(since, until, scope))


@router.get(
    "/audit/volumes",
    response_model=VolumesOut,
    tags=["audit"],
    responses={403: {"description": "outside the key's scope"}, 410: GONE},
)
def volumes(
    store: StoreDep,
    scope: ScopeDep,
    by: Annotated[Literal["org", "partner", "modality"], Query(description="what to count per")],
    since: Since = None,
    until: Until = None,
    key: Annotated[
        str | None, Query(max_length=63, pattern=KEY_PATTERN, description="only this organisation, partner or modality")
    ] = None,
) -> VolumesOut:
    """Instances, studies and bytes per UTC day and sending organisation, partner or modality, for the
    days overlapping the period (open ends: the first and last day recorded; at most 400 days).
    A study counts once per key and day. An organisation's key reads `by=org` of its own, a partner's
    `by=partner` of its own."""
    key = scope.aggregate_key(by, key)
    since, until = aggregate_period(since, until)
    return VolumesOut(by=by, days=[VolumeOut.from_row(r) for r in store.volumes(by, since, until, key)])


@router.get(
    "/audit/turnaround",
    response_model=TurnaroundOut,
    tags=["audit"],
    responses={403: {"description": "outside the key's scope"}, 410: GONE},
)
def turnaround(
    store: StoreDep,
    scope: ScopeDep,
    partner: Annotated[str | None, Query(max_length=63, pattern=ID_PATTERN, description="only this partner")] = None,
    since: Since = None,
    until: Until = None,
) -> TurnaroundOut:
    """Per partner, for the UTC days overlapping the period: p50/p90/p95/p99 of the time from ingest
    accepted to stored in the partner's PACS (receipts with status stored), per day and overall.
    A partner's key reads its own; an organisation's is refused (not kept per organisation)."""
    partner = scope.aggregate_key("partner", partner)
    since, until = aggregate_period(since, until)
    return TurnaroundOut(
        partners=[PartnerTurnaround.from_turnaround(t) for t in store.turnaround(since, until, partner)]
    )


@router.get(
    "/audit/quarantines",
    response_model=QuarantinesOut,
    tags=["audit"],
    responses={403: {"description": "a scoped key asking from before its counts were kept"}, 410: GONE},
)
def quarantines(store: StoreDep, scope: ScopeDep, since: Since = None, until: Until = None) -> QuarantinesOut:
    """Quarantines and dead letters per UTC day, stage and reason (days overlapping the period). A scoped
    key gets those of the records it sees (as for the summary)."""
    since, until = aggregate_period(since, until)
    return QuarantinesOut(days=[StageReasonDay.from_count(c) for c in store.stage_reasons(since, until, scope)])


# HEAD too: uptime checkers and load balancers probe with it (a 405 read as "down").
@open_router.api_route(
    "/healthz", methods=["GET", "HEAD"], response_model=Health, tags=["health"], responses={503: {"model": Health}}
)
def healthz(store: StoreDep, response: Response) -> Health:
    """Serving, and whether the audit store answers."""
    reachable = store.ping()
    if not reachable:
        response.status_code = 503
    return Health(status="ok" if reachable else "degraded", store=reachable)


def _store_unavailable(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse(
        status_code=503, content={"detail": "audit store unavailable; try again"}, headers=UNAVAILABLE_HEADERS
    )


def _purged(request: Request, exc: Exception) -> JSONResponse:
    retained_from = exc.retained_from if isinstance(exc, PeriodPurged) else None
    return JSONResponse(status_code=410, content={"detail": str(exc), "retained_from": retained_from})


def _out_of_scope(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse(status_code=403, content={"detail": str(exc)})


class AccessRecording:
    """Records every `/audit/*` request, answered or refused, before its answer leaves: an answer whose
    access record could not be stored is replaced by a 503. Plain ASGI, not Starlette's
    BaseHTTPMiddleware, which runs the endpoint in a task of its own and streams the answer through a
    memory channel (a trail can be ~2 MB): here the answer's start is held until the entry is recorded,
    then everything passes through as the endpoint sent it."""

    def __init__(self, app: ASGIApp, access_log: AccessLog) -> None:
        self._app = app
        self._log = access_log

    async def __call__(self, scope: AsgiScope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not str(scope["path"]).startswith("/audit/"):
            await self._app(scope, receive, send)
            return
        state: dict[str, Any] = scope.setdefault("state", {})  # the endpoint's `request.state`
        held: list[Message] = []
        refused = recorded = False

        async def send_recorded(message: Message) -> None:
            nonlocal refused, recorded
            if refused:
                return
            if message["type"] == "http.response.start":
                held.append(message)  # sent once the entry is recorded
                return
            if held:
                start = held.pop()
                recorded = True
                if not await self._record(scope, state, int(start["status"])):
                    refused = True
                    unavailable = JSONResponse(
                        status_code=503,
                        content={"detail": "access log unavailable; try again"},
                        headers=UNAVAILABLE_HEADERS,
                    )
                    await unavailable(scope, receive, send)
                    return
                await send(start)
            await send(message)

        try:
            await self._app(scope, receive, send_recorded)
        except Exception:
            # Starlette's outermost handler answers 500 past this middleware: recorded here, or that
            # request (who asked what, and that it failed) was missing from the access log. An answer
            # already begun was recorded with its own status.
            if not recorded:
                await self._record(scope, state, 500)
            raise

    async def _record(self, scope: AsgiScope, state: dict[str, Any], status: int) -> bool:
        analyst: Analyst | None = state.get("analyst")
        entry = AccessEntry(
            analyst_id=analyst.analyst_id if analyst else None,
            scope=str(analyst.scope) if analyst else None,
            method=str(scope["method"]),
            path=storable_text(str(scope["path"])),
            params=storable_params(QueryParams(scope.get("query_string", b""))),
            status=status,
        )
        try:
            await run_in_threadpool(self._log.record, entry)
        except TransientError:
            return False
        return True


def create_app(
    store: AuditStore,
    key_check: KeyCheck | None,
    access_log: AccessLog | None = None,
    control_changes: ChangeReader | None = None,
) -> FastAPI:
    """`key_check` maps an API key to its analyst (None: unknown key; a plain id: a key that sees
    everything); None leaves the API open. `access_log` records every query (services/audit/main.py
    always gives one). `control_changes` serves `/audit/control-changes` (services/audit/changes_api.py)."""
    app = FastAPI(title="imx audit", version="1", description=DESCRIPTION, telemetry=FASTAPI_TELEMETRY_OFF)
    app.state.audit_store = store
    app.state.key_check = key_check
    app.include_router(router, dependencies=[Depends(_authorised)])
    app.include_router(export_router, dependencies=[Depends(_authorised)])
    if control_changes is not None:
        app.state.control_changes = control_changes
        app.include_router(changes_router, dependencies=[Depends(_authorised)])
    app.include_router(open_router)
    app.include_router(ui_router)  # the analysts' page: static, no key; it asks the analyst for theirs
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(TransientError, _store_unavailable)
    app.add_exception_handler(ScopeDenied, _out_of_scope)
    app.add_exception_handler(PeriodPurged, _purged)
    if access_log is not None:
        app.add_middleware(AccessRecording, access_log=access_log)
    return app
