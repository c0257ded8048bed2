"""What a failure means for the input that met it, decided in one place for every stage.

- TRANSIENT: the infrastructure failed (broker, database, disk, network), not the input. The
  input is read again later and nothing of it is committed; it never reaches the dead-letter topic.
- INPUT: the input itself can never be processed (a value the decoder cannot read, a structure it
  does not expect). The stage that finds it quarantines it with a reason code.
- DEFECT: neither, e.g. a bug in a stage. The input goes to the dead-letter topic, to be replayed
  (`imx dlq replay`) once the defect is fixed.

Only the type of an error (its errno, its server code) is looked at, never its text: texts may quote
values. One exception: FerretDB's InternalError says only in its text that its PostgreSQL is away, so that
text is searched for fixed phrases (BACKEND_AWAY); it is never logged or passed on.
"""

from __future__ import annotations

import errno
import re
import struct
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from enum import StrEnum
from typing import Any

from kafka.errors import KafkaError
from pydicom.errors import BytesLengthException, InvalidDicomError
from pymongo.errors import BulkWriteError, ConnectionFailure, OperationFailure, PyMongoError, WriteConcernError

from services.common.messages import PermanentError, TransientError
from services.common.mongo import DUPLICATE_KEY


class Failure(StrEnum):
    TRANSIENT = "transient"
    INPUT = "input"
    DEFECT = "defect"


# errno values that describe the machine, not the file: a full or failing disk, exhausted
# descriptors or memory, a network file system or object store that is away.
TRANSIENT_ERRNOS = frozenset(
    {
        errno.ENOSPC,
        errno.EDQUOT,
        errno.EIO,
        errno.EAGAIN,
        errno.EBUSY,
        errno.EINTR,
        errno.ENOMEM,
        errno.EMFILE,
        errno.ENFILE,
        errno.ESTALE,
        errno.ETIMEDOUT,
        errno.ECONNREFUSED,
        errno.ECONNRESET,
        errno.ECONNABORTED,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
        errno.ENETDOWN,
        errno.EPIPE,
    }
)

# Server error codes that say "not now" (pymongo retries these itself within one operation; a stage
# retries them across operations): shutting down, stepping down, no primary, out of time.
TRANSIENT_SERVER_CODES = frozenset({6, 7, 50, 64, 89, 91, 189, 262, 9001, 10107, 11600, 11602, 13435, 13436})
# FerretDB (the devstack's MongoDB) answers InternalError (1) when its PostgreSQL is away, restarting or out
# of room: its driver's (pgx's) connection failures, which carry no SQLSTATE ("failed to connect to ...:
# dial error", "unexpected EOF", "conn closed", ...), and PostgreSQL's own SQLSTATE class 08 (connection
# exception), 53 (insufficient resources: too many clients), 57P01-57P03 (shut down, crashed, not yet
# accepting connections), 40001 and 40P01 (serialization failure, deadlock). Taken for a defect, a batch that
# met PostgreSQL's restart was dead-lettered and the stage ended (`make chaos`, database-crash, 2026-12-08).
INTERNAL_ERROR = 1
BACKEND_AWAY = re.compile(
    r"SQLSTATE (08[0-9A-Z]{3}|53[0-9A-Z]{3}|57P0[123]|40001|40P01)\b"
    r"|failed to connect to|dial error|unexpected EOF|conn closed|connection reset|broken pipe|i/o timeout"
)

# What pydicom (and the struct/codec layers under it) raise on input it cannot decode: an unknown
# VR (NotImplementedError), a malformed number, date or character set (ValueError, LookupError,
# UnicodeError), a missing element or codec (KeyError, LookupError), truncated data (EOFError,
# struct.error, BytesLengthException), nesting beyond the interpreter's stack (RecursionError).
INPUT_ERRORS: tuple[type[BaseException], ...] = (
    InvalidDicomError,
    BytesLengthException,
    NotImplementedError,
    ValueError,
    LookupError,
    EOFError,
    struct.error,
    RecursionError,
    PermanentError,
)


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, TransientError):
        return True
    if isinstance(exc, KafkaError):
        return bool(exc.retriable)
    if isinstance(exc, PyMongoError):
        return _mongo_transient(exc)
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    return isinstance(exc, OSError) and exc.errno in TRANSIENT_ERRNOS


def _mongo_transient(exc: PyMongoError) -> bool:
    if isinstance(exc, ConnectionFailure):  # AutoReconnect, NetworkTimeout, ServerSelectionTimeoutError...
        return True
    if exc.has_error_label("RetryableWriteError") or exc.has_error_label("TransientTransactionError"):
        return True
    if isinstance(exc, BulkWriteError):  # its code (65) says only "some writes failed": its errors say why
        return _bulk_transient(exc.details or {})
    if isinstance(exc, (OperationFailure, WriteConcernError)):
        return _code_transient(exc.code, str((exc.details or {}).get("errmsg", exc)))
    return False


def _code_transient(code: int | None, message: str) -> bool:
    if code == INTERNAL_ERROR:
        return BACKEND_AWAY.search(message) is not None
    return code in TRANSIENT_SERVER_CODES


def _bulk_transient(details: Mapping[str, Any]) -> bool:
    """A bulk write whose failures other than duplicate keys (a replay's) all say "not now": a write concern
    not satisfied in time (a primary stepping down, replication lagging), the backend away."""
    errors = [
        error
        for error in (*details.get("writeErrors", ()), *details.get("writeConcernErrors", ()))
        if error.get("code") != DUPLICATE_KEY
    ]
    return bool(errors) and all(
        "RetryableWriteError" in error.get("errorLabels", ())
        or _code_transient(error.get("code"), str(error.get("errmsg", "")))
        for error in errors
    )


@contextmanager
def database_away_is_transient(what: str) -> Iterator[None]:
    """A database error that a later call may not meet (`is_transient`; any write concern not satisfied),
    raised as TransientError naming `what` and the error's type only: callers answer "unavailable, try
    again" (503, UNAVAILABLE) or retry next round, where any other error is a defect."""
    try:
        yield
    except PyMongoError as exc:
        if isinstance(exc, WriteConcernError) or is_transient(exc):
            raise TransientError(f"{what} unavailable: {type(exc).__name__}") from exc
        raise


def classify(exc: BaseException) -> Failure:
    """What to do with the input whose processing raised `exc` (see the module's docstring)."""
    if is_transient(exc):
        return Failure.TRANSIENT
    if isinstance(exc, INPUT_ERRORS):
        return Failure.INPUT
    return Failure.DEFECT


def input_problem(exc: BaseException) -> str | None:
    """A PHI-free detail (the error's type) when `exc` is a deterministic problem with the input,
    else None. For a stage's quarantine event: the reason code is the stage's own."""
    if classify(exc) is Failure.INPUT:
        return type(exc).__name__
    return None
