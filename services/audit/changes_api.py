"""`GET /audit/control-changes`: the changes made through the services' gRPC control plane, newest
first (services/common/control_changes.py writes them): who (a control token's name), which method and
object, the object's version before and after, the outcome, and the PS3.15 A.5.3 event codes. For keys
that see everything only. Included by `create_app` behind the analysts' key check."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Protocol

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel
from pymongo.errors import PyMongoError

from services.common.messages import TransientError

changes_router = APIRouter()


class ChangeReader(Protocol):
    def recent(self, limit: int = 100, before_id: str | None = None) -> list[dict[str, Any]]: ...


class Coded(BaseModel):
    code: str
    meaning: str


class ControlChange(BaseModel):
    id: str
    occurred_at: datetime
    who: str
    role: str
    service: str
    method: str
    object_kind: str
    object_id: str
    before: str
    after: str
    outcome: str
    outcome_indicator: int
    event_id: Coded
    event_type: Coded


class ControlChangesOut(BaseModel):
    changes: list[ControlChange]
    next_before: str | None  # pass as `before` for the next (older) page; null at the end


@changes_router.get("/audit/control-changes", response_model=ControlChangesOut, tags=["control plane"])
async def control_changes(
    request: Request,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    before: Annotated[
        str | None,
        Query(pattern=r"^[0-9]{13}:[0-9a-f]{32}$", description="`next_before` of the previous page"),
    ] = None,
) -> ControlChangesOut:
    """Changes made through the gRPC control and admin APIs, newest first."""
    request.state.analyst.scope.require_everything("control-plane changes")
    reader: ChangeReader = request.app.state.control_changes
    try:
        docs = await run_in_threadpool(reader.recent, limit, before)
    except PyMongoError as exc:
        raise TransientError(f"control changes unavailable: {type(exc).__name__}") from exc
    changes = [ControlChange(id=d["_id"], **{k: v for k, v in d.items() if k != "_id"}) for d in docs]
    return ControlChangesOut(changes=changes, next_before=changes[-1].id if len(changes) == limit else None)
