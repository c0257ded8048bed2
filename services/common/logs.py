"""Structured JSON logs that cannot carry PHI by accident.

Only allow-listed `extra` fields reach the output (ids, counts, reasons, tags: never values from a
DICOM header), and the message itself must be a constant string: arguments are dropped.

Libraries do not keep to that: pydicom and pynetdicom warn with f-strings that quote UIDs, character
sets and other values from the data they read, and Python warnings carry the same text. So their
records, and Python warnings (routed to logging as "py.warnings"), are written with their logger
name and level and a withheld message.
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
        "where",
        "group",  # a Kafka consumer group's name
        "instance_id",  # a replica's name (IMX_INSTANCE_ID)
        "kept_owed",  # studies or objects kept because a partner is still owed them (a count)
        "bytes",  # a size
        "record_kind",  # a bus record's kind header (PartnerDelivery, StudyComplete)
        "pdu_type",  # a DICOM upper-layer PDU type, as hex
        "snapshot",  # a configuration cache's name (routes, partners, ...)
        "method",  # a gRPC control method's name
        "peer_address",  # a refused DICOM caller's network address: a device's, never a patient's
        "fingerprint",  # the audit log's public signing key's hash
    }
)
# Loggers (and their children) whose message text is never written: libraries that read received data.
# pymongo's command log (at DEBUG) is the command and its reply: whole documents, audit's records linking
# an original's UIDs to its de-identified copy's among them; grpc's server logs an exception's text.
WITHHELD_LOGGERS = ("pydicom", "pynetdicom", "py.warnings", "pymongo", "grpc", "httpcore", "httpx")
WITHHELD_MESSAGE = "library message withheld: it may quote values from the input"
_STANDARD_ATTRS = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}
# Library warnings written once per process: the first says something about the set-up, repeats nothing.
# kafka-python warns at every SCRAM sign-in on a SASL_PLAINTEXT listener (the services' internal one
# in the devstack and compose), although SCRAM never sends the password itself. PLAIN's "Sending
# username and password in the clear" is not here: that one does.
ONCE_PER_PROCESS = frozenset(
    {("kafka.net.sasl.scram", "Exchanging credentials in the clear during Sasl Authentication")}
)


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
            "msg": str(record.msg) if _writes_message_text(record.name) else WITHHELD_MESSAGE,
        }
        for key, value in record.__dict__.items():
            if key in SAFE_FIELDS and key not in _STANDARD_ATTRS:
                entry[key] = value if isinstance(value, int | float | bool) else str(value)
        if record.exc_info and record.exc_info[0] is not None:
            entry["exception_type"] = record.exc_info[0].__name__
        return json.dumps(entry, separators=(",", ":"))


class FirstOnly(logging.Filter):
    """Lets the first record of each ONCE_PER_PROCESS (logger, message) through and drops its repeats."""

    def __init__(self) -> None:
        super().__init__()
        self._seen: set[tuple[str, str]] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, str(record.msg))
        if key not in ONCE_PER_PROCESS:
            return True
        if key in self._seen:
            return False
        self._seen.add(key)
        return True


def _writes_message_text(logger_name: str) -> bool:
    return not any(logger_name == prefix or logger_name.startswith(prefix + ".") for prefix in WITHHELD_LOGGERS)


def configure_logging(service: str, level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(PhiSafeJsonFormatter(service))
    handler.addFilter(FirstOnly())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # warnings.warn() would otherwise print its text to stderr beside the JSON lines.
    logging.captureWarnings(True)
    # kafka-python logs broker chatter at INFO; keep it to warnings.
    logging.getLogger("kafka").setLevel(logging.WARNING)
    for library in ("pydicom", "pynetdicom"):
        # Their debug helpers attach handlers of their own, which would bypass the formatter above.
        logger = logging.getLogger(library)
        logger.handlers[:] = [h for h in logger.handlers if isinstance(h, logging.NullHandler)]
        logger.propagate = True
        logger.setLevel(logging.WARNING)
