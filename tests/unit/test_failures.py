"""One classification of failures for every stage: infrastructure → retry, input → quarantine,
anything else → dead letter."""

from __future__ import annotations

import errno
import struct

import pytest
from kafka.errors import KafkaTimeoutError, MessageSizeTooLargeError
from kafka.structs import TopicPartition
from pydicom.errors import InvalidDicomError
from pymongo.errors import (
    AutoReconnect,
    BulkWriteError,
    DuplicateKeyError,
    NetworkTimeout,
    NotPrimaryError,
    OperationFailure,
    ServerSelectionTimeoutError,
)

from services.common.bus import run_handler_over_batch
from services.common.failures import Failure, classify, input_problem
from services.common.messages import IncomingMessage, OutgoingMessage, TransientError


@pytest.mark.parametrize(
    "error",
    [
        TransientError("store down"),
        AutoReconnect("connection closed"),
        ServerSelectionTimeoutError("no servers"),
        NetworkTimeout("timed out"),
        NotPrimaryError("stepped down"),
        OperationFailure("shutting down", code=91),
        # FerretDB while its PostgreSQL restarts (as `make chaos` met it)
        OperationFailure(
            "failed to connect",
            code=1,
            details={
                "errmsg": "[msg_insert.go:168 handler.(*Handler).MsgInsert] failed to connect to `user=postgres`: "
                "server error: FATAL: the database system is not yet accepting connections (SQLSTATE 57P03)",
                "code": 1,
            },
        ),
        # ... and while it is not listening yet, or just went: its driver's (pgx's) texts carry no SQLSTATE
        *(
            OperationFailure("x", code=1, details={"errmsg": text})
            for text in (
                "[msg_find.go:75] failed to connect to `user=postgres database=postgres`: 127.0.0.1:27118 "
                "(127.0.0.1): dial error: dial tcp 127.0.0.1:27118: connect: connection refused",
                "[collection.go:123] failed to receive message: unexpected EOF",
                "[collection.go:123] conn closed",
                "FATAL: sorry, too many clients already (SQLSTATE 53300)",
            )
        ),
        OSError(errno.ENOSPC, "No space left on device"),
        OSError(errno.EIO, "Input/output error"),
        OSError(errno.EDQUOT, "Disk quota exceeded"),
        ConnectionRefusedError(errno.ECONNREFUSED, "refused"),
        TimeoutError("timed out"),
        KafkaTimeoutError(),
    ],
    ids=type,
)
def test_infrastructure_failures_are_transient(error: BaseException) -> None:
    assert classify(error) is Failure.TRANSIENT


@pytest.mark.parametrize(
    "error",
    [
        NotImplementedError("Unknown Value Representation 'ZZ' in tag (0008,0060)"),
        ValueError("invalid literal for int() with base 10: 'Thistlewood'"),
        KeyError("x"),
        UnicodeDecodeError("ascii", b"\xff", 0, 1, "bad"),
        LookupError("unknown encoding"),
        InvalidDicomError("not DICOM"),
        struct.error("unpack requires a buffer of 4 bytes"),
        EOFError(),
        RecursionError(),
    ],
    ids=type,
)
def test_decoding_errors_are_input_problems_named_by_type_only(error: BaseException) -> None:
    assert classify(error) is Failure.INPUT
    assert input_problem(error) == type(error).__name__


@pytest.mark.parametrize(
    "error",
    [
        RuntimeError("bug"),
        AttributeError("bug"),
        FileNotFoundError(errno.ENOENT, "gone"),
        DuplicateKeyError("dup"),
        OperationFailure("unauthorized", code=13),
        OperationFailure("x", code=1, details={"errmsg": "unexpected: a bug (SQLSTATE 42P01)"}),  # undefined table
        MessageSizeTooLargeError(),
    ],
    ids=type,
)
def test_the_rest_are_defects(error: BaseException) -> None:
    assert classify(error) is Failure.DEFECT
    assert input_problem(error) is None


@pytest.mark.parametrize(
    "error", [AutoReconnect("primary gone"), OSError(errno.ENOSPC, "No space left on device")], ids=type
)
def test_the_bus_retries_a_record_that_met_an_outage_and_dead_letters_nothing(error: Exception) -> None:
    def handler(message: IncomingMessage) -> list[OutgoingMessage]:
        if message.offset == 1:
            raise error
        return [OutgoingMessage("out", message.value)]

    records = [IncomingMessage("in", 0, offset, b"k", b"v") for offset in range(3)]
    result = run_handler_over_batch(records, handler, "dlq", "test")
    assert [o.topic for o in result.outputs] == ["out"]
    assert result.retry_from == {TopicPartition("in", 0): 1}
    assert result.commits == {TopicPartition("in", 0): 1}
    assert result.failed == 0


def test_a_dead_letter_says_its_failure_class() -> None:
    def handler(message: IncomingMessage) -> list[OutgoingMessage]:
        raise RuntimeError("bug")

    result = run_handler_over_batch([IncomingMessage("in", 0, 0, b"k", b"v")], handler, "dlq", "test")
    [dead] = result.outputs
    assert dead.headers["imx-failure"] == b"defect"


def test_a_database_away_is_said_as_transient_and_a_refused_operation_is_not() -> None:
    """Audit's stores and the control plane answer 503 / UNAVAILABLE for the first, where FerretDB's
    PostgreSQL restarting was a 500, or UNKNOWN with the driver's text (its user and socket path)."""
    from services.common.control_auth import dependency_away
    from services.common.failures import database_away_is_transient

    restarting = OperationFailure("x", code=1, details={"errmsg": "failed to connect to `user=imx`: dial error"})
    unavailable = pytest.raises(TransientError, match="audit store unavailable: OperationFailure")
    with unavailable as said, database_away_is_transient("audit store"):
        raise restarting
    assert "imx" not in str(said.value).replace("audit store", "")
    with pytest.raises(DuplicateKeyError), database_away_is_transient("audit store"):
        raise DuplicateKeyError("dup")
    assert dependency_away(restarting) and dependency_away(AutoReconnect("gone"))
    assert not dependency_away(OperationFailure("unauthorized", code=13))


def test_a_bulk_write_is_transient_when_every_failure_but_a_duplicate_says_not_now() -> None:
    """pymongo gathers a bulk write's failures in one BulkWriteError (code 65): delivery's records, written
    in bulk, dead-lettered an instance when a write concern timed out (64) or FerretDB's backend went away."""
    concern = {"writeErrors": [], "writeConcernErrors": [{"code": 64, "errmsg": "waiting for replication timed out"}]}
    backend = {"writeErrors": [{"index": 0, "code": 1, "errmsg": "conn closed"}, {"index": 1, "code": 11000}]}
    assert classify(BulkWriteError(concern)) is Failure.TRANSIENT
    assert classify(BulkWriteError(backend)) is Failure.TRANSIENT
    assert classify(BulkWriteError({"writeErrors": [{"index": 0, "code": 11000}]})) is Failure.DEFECT
    assert classify(BulkWriteError({"writeErrors": [{"index": 0, "code": 121, "errmsg": "invalid"}]})) is Failure.DEFECT
