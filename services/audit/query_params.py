"""What the audit API's endpoints share about their query parameters: a period in UTC, and a 422 that
says which parameter is wrong and why without repeating the value (a mistyped study UID or organisation
can be a patient's name)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from services.audit.store import MAX_DAYS

# Organisation and partner ids (services/common/stores/organisations.py, services/common/topics.py);
# `key` of /audit/volumes is one of those or a modality. Anything else matches no record, and a NUL
# would not even reach the database.
ID_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"
KEY_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$"


_FIRST_MOMENT = datetime.min.replace(tzinfo=UTC)


def invalid(param: str, message: str) -> RequestValidationError:
    """A 422 for `param`, shaped as FastAPI's own."""
    return RequestValidationError([{"type": "value_error", "loc": ("query", param), "msg": message}])


def utc(moment: datetime | None, param: str) -> datetime | None:
    """`moment` in UTC (naive: taken as UTC); a moment whose offset takes it past year 1 or 9999 is a 422."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        raise invalid(param, "outside the years 1 to 9999 once in UTC") from None


def period(since: datetime | None, until: datetime | None) -> tuple[datetime | None, datetime | None]:
    """`since` and `until` in UTC; until must be later."""
    since, until = utc(since, "since"), utc(until, "until")
    # Nothing is before it, and the period's last moment (until less the store's millisecond) must exist:
    # until=0001-01-01T00:00:00.0005Z overflowed there, a 500.
    if until is not None and until < _FIRST_MOMENT + timedelta(milliseconds=1):
        raise invalid("until", "until must be at least 0001-01-01T00:00:00.001Z")
    if since is not None and until is not None and since >= until:
        raise invalid("until", "until must be later than since")
    return since, until


def aggregate_period(since: datetime | None, until: datetime | None) -> tuple[datetime | None, datetime | None]:
    """`period`, for the daily aggregates: a period of more than MAX_DAYS UTC days is a 422. It was cut to
    its last MAX_DAYS days without a word, and an analyst asking for two years got one year's counts.
    (An open end still stops at the first or last day recorded, and then at MAX_DAYS days.)"""
    since, until = period(since, until)
    if since is not None and until is not None:
        days = ((until - timedelta(milliseconds=1)).date() - since.date()).days + 1
        if days > MAX_DAYS:
            raise invalid("until", f"an aggregate covers at most {MAX_DAYS} days (this period has {days})")
    return since, until


def without_inputs(errors: Sequence[Any]) -> list[dict[str, Any]]:
    """Validation errors with where and why, not what was sent (pure)."""
    return [{key: error[key] for key in ("type", "loc", "msg") if key in error} for error in errors]


async def invalid_request(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 422 body, minus each error's `input` and `ctx`."""
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    return JSONResponse(status_code=422, content={"detail": without_inputs(errors)})
