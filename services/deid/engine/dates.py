"""Shifting DA and DT values by whole days (PS3.15 E.3.6, Retain Longitudinal Modified Dates).

A whole-day shift keeps every interval and time of day; partial precision is kept as it was.
Values that cannot be parsed return None: the caller must not keep them.
"""

from __future__ import annotations

import datetime as dt
import re

_DT = re.compile(r"(\d{4})(\d{2})?(\d{2})?([^&+\-]*)([&+\-].*)?")


def shift_date(value: str, days: int) -> str | None:
    """Shift a DA value (YYYYMMDD, legacy YYYY.MM.DD, or a query range A-B)."""
    value = value.strip()
    if not value:
        return value
    if "-" in value:
        parts = [shift_date(part, days) if part else "" for part in value.split("-", 1)]
        return None if None in parts else "-".join(part or "" for part in parts)
    digits = value.replace(".", "") if len(value) == 10 else value
    if len(digits) != 8 or not digits.isdigit():
        return None
    try:
        moved = dt.date(int(digits[:4]), int(digits[4:6]), int(digits[6:])) + dt.timedelta(days=days)
    except (ValueError, OverflowError):
        return None
    return moved.strftime("%Y%m%d") if moved.year >= 1000 else None


def shift_datetime(value: str, days: int) -> str | None:
    """Shift the date part of a DT value, keeping its precision, time and UTC offset."""
    value = value.strip()
    if not value:
        return value
    match = _DT.fullmatch(value)
    if match is None:
        return None
    year, month, day, rest, offset = match.groups()
    if rest and not re.fullmatch(r"\d{2,6}(\.\d{1,6})?", rest):
        return None
    try:
        moved = dt.date(int(year), int(month or 1), int(day or 1)) + dt.timedelta(days=days)
    except (ValueError, OverflowError):
        return None
    if moved.year < 1000:
        return None
    text = f"{moved.year:04d}"
    if month:
        text += f"{moved.month:02d}"
    if day:
        text += f"{moved.day:02d}"
    return text + (rest or "") + (offset or "")
