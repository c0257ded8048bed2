"""Structured JSON logs that cannot carry PHI by accident.

Only allow-listed `extra` fields reach the output (ids, counts, reasons, tags: never values from a
DICOM header), and the message itself must be a constant string: arguments are dropped.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

SAFE_FIELDS = frozenset(
    {
        "event_id",
        "study_uid",
        "sop_uid",
        "org",
        "partner",
        "route_id",
        "profile",
        "topic",
        "partition",
        "offset",
        "reason",
        "tag",
        "count",
        "seconds",
        "stage",
        "error",
        "port",
        "service",
        "channel",
        "status",
        "calling_ae",
        "instances",
        "rate",
    }
)
_STANDARD_ATTRS = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class PhiSafeJsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self._service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "service": self._service,
            "logger": record.name,
            # record.msg, not getMessage(): %-arguments could carry values, so they are never rendered.
            "msg": str(record.msg),
        }
        for key, value in record.__dict__.items():
            if key in SAFE_FIELDS and key not in _STANDARD_ATTRS:
                entry[key] = value if isinstance(value, int | float | bool) else str(value)
        if record.exc_info and record.exc_info[0] is not None:
            entry["exception_type"] = record.exc_info[0].__name__
        return json.dumps(entry, separators=(",", ":"))


def configure_logging(service: str, level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(PhiSafeJsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # kafka-python logs broker chatter at INFO; keep it to warnings.
    logging.getLogger("kafka").setLevel(logging.WARNING)
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
