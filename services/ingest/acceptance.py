"""The one path every channel (C-STORE, STOW-RS, `imx send`) takes to accept an instance.

inspect header → store bytes (claim check) → look the receipt up → publish InstanceIngested → mark
the receipt published. The sender hears "accepted" only after the broker acknowledged the event, so a
crash at any point means the sender retries, and the receipt makes that retry publish at most one
more copy of the same event (same id, the retry's timestamps). Unusable inputs are stored and
announced on the quarantine topic, and the caller gets a typed rejection.

The last three steps are a group commit (services/ingest/commit_group.py): instances that arrive on
several associations or requests at once share one receipt claim, one broker flush and one mark write.

An instance comes as bytes (`accept`) or as a file the channel has already written to disk
(`accept_file`: C-STORE received in chunks, up to 1 GiB): a file is inspected through a memory map
(only its header's pages are read), hashed in pieces (unless the channel hashed it as it wrote it:
C-STORE) and moved into the blob store, so its size never shows in the process's memory.

Thread-safe: no state of its own; the blob store, MongoDB client and Kafka producer are thread-safe.
"""

from __future__ import annotations

import logging
import mmap
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal, Protocol, get_args

from google.protobuf.message import Message
from kafka.errors import KafkaError
from opentelemetry import metrics, trace

from services.common.blob_store import BlobStore, file_sha256, sha256_hex
from services.common.dicom.header import (
    DEFAULT_LIMITS,
    ByteSource,
    InputLimits,
    InstanceHeader,
    InvalidInstance,
    inspect_instance,
)
from services.common.dicom.part10 import zero_preamble, zero_preamble_file
from services.common.events import event_message, now_ms
from services.common.messages import OutgoingMessage, TransientError
from services.common.publish_refusals import RecordRefused
from services.common.quarantine_events import Unaccepted, quarantined
from services.common.stats import StageStats
from services.common.topics import PARTNER_ID_RULE, Topics, validate_partner_id
from services.ingest.commit_group import Commit, CommitGroup, Outcome
from services.ingest.errors import EventRefused, IngestPaused, IngestUnavailable, InvalidDestination
from services.ingest.ingest_events import ingested_event_id, instance_ingested
from services.ingest.receipts import ReceiptStore

log = logging.getLogger(__name__)

Channel = Literal["c-store", "stow-rs", "cli"]
CHANNELS: tuple[Channel, ...] = get_args(Channel)

# Not a header problem: a STOW-RS request to /studies/{uid} carried an instance of another study.
STUDY_MISMATCH = "study-mismatch"
# Nor this: a C-STORE request named one instance (Affected SOP Class/Instance UID) and carried another.
SOP_MISMATCH = "sop-mismatch"
TOO_LARGE = "too-large"


@dataclass(frozen=True)
class Expected:
    """What the request around an instance says it is: the study of a STOW-RS /studies/{uid} target, the
    Affected SOP Class and Instance UIDs of a C-STORE command. Empty: not said."""

    study_uid: str = ""
    sop_class_uid: str = ""
    sop_instance_uid: str = ""

    def mismatch(self, header: InstanceHeader) -> tuple[str, str] | None:
        """(reason, keyword) of the first thing the instance says otherwise, or None (pure)."""
        checks = (
            (STUDY_MISMATCH, "StudyInstanceUID", self.study_uid, header.study_instance_uid),
            (SOP_MISMATCH, "SOPClassUID", self.sop_class_uid, header.sop_class_uid),
            (SOP_MISMATCH, "SOPInstanceUID", self.sop_instance_uid, header.sop_instance_uid),
        )
        for reason, keyword, said, found in checks:
            if said and said != found:
                return reason, keyword
        return None


@dataclass(frozen=True)
class Accepted:
    """Stored and published."""

    event_id: str
    study_instance_uid: str
    sop_class_uid: str
    sop_instance_uid: str
    sha256: str


@dataclass(frozen=True)
class Duplicate:
    """Already received and published earlier: success for the sender, nothing new published."""

    event_id: str
    study_instance_uid: str
    sop_class_uid: str
    sop_instance_uid: str
    sha256: str


@dataclass(frozen=True)
class Rejected:
    """Never ingested. `quarantined`: a Quarantined event was published for operators."""

    reason: str
    detail: str = ""
    quarantined: bool = False
    study_instance_uid: str = ""
    sop_class_uid: str = ""
    sop_instance_uid: str = ""


AcceptanceResult = Accepted | Duplicate | Rejected


class Publisher(Protocol):
    """The part of BusProducer acceptance uses: publish and wait for the broker's acknowledgements."""

    def publish(self, messages: Sequence[OutgoingMessage], timeout_s: float = 60.0) -> None: ...


class _Input(Protocol):
    """One instance as it arrived: in memory or in a file."""

    size: int

    def mapped(self) -> AbstractContextManager[ByteSource]:
        """The whole instance, readable for as long as the context lasts."""
        ...

    def store(self, blobs: BlobStore) -> str: ...

    def sha256(self) -> str: ...


class _BytesInput:
    def __init__(self, data: bytes) -> None:
        # What is stored, hashed and announced is the file with a zero preamble, on every route.
        self.data = zero_preamble(data)
        self.size = len(self.data)

    @contextmanager
    def mapped(self) -> Iterator[ByteSource]:
        yield self.data

    def store(self, blobs: BlobStore) -> str:
        return blobs.put(self.data)

    def sha256(self) -> str:
        return sha256_hex(self.data)


class _FileInput:
    """A file the channel wrote and hands over: zeroed preamble in place (unless the channel wrote it
    as zeros itself), moved into the store. `received`: the channel's own descriptor of the file, open
    for reading, and the bytes it wrote there (C-STORE, `received_files`): mapped from that descriptor
    and not asked for its size, so the file is not opened again here."""

    def __init__(
        self,
        path: Path,
        preamble_written_zero: bool = False,
        sha256: str | None = None,
        received: tuple[int, int] | None = None,
    ) -> None:
        if not preamble_written_zero:
            zero_preamble_file(path)
            sha256 = None  # the writer's hash was of the bytes before
        self.path = path
        self._fd, self.size = received if received is not None else (-1, path.stat().st_size)
        self._sha256 = sha256

    @contextmanager
    def mapped(self) -> Iterator[ByteSource]:
        if not self.size:
            yield b""  # an empty file cannot be mapped
            return
        if self._fd >= 0:
            view = mmap.mmap(self._fd, self.size, access=mmap.ACCESS_READ)
        else:
            with open(self.path, "rb") as file:
                view = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            yield view
        finally:
            # A view still held by an exception's frames keeps it mapped until collected.
            with suppress(BufferError):
                view.close()

    def store(self, blobs: BlobStore) -> str:
        return blobs.put_file(self.path, self._sha256)

    def sha256(self) -> str:
        if self._sha256 is not None:
            return self._sha256
        with open(self.path, "rb") as file:
            return file_sha256(file)


def check_destination(requested: str | None) -> str:
    """A requested destination is a partner id ("" when none); raises InvalidDestination otherwise."""
    if not requested:
        return ""
    try:
        return validate_partner_id(requested)
    except ValueError:  # what a sender asked for is not repeated: it could be anything, a patient's name too
        raise InvalidDestination(PARTNER_ID_RULE) from None


class Acceptance:
    def __init__(
        self,
        *,
        blobs: BlobStore,
        receipts: ReceiptStore,
        bus: Publisher,
        topics: Topics,
        max_instance_bytes: int,
        publish_timeout_s: float = 30.0,
        stats: StageStats | None = None,
        limits: InputLimits = DEFAULT_LIMITS,
        inspect: Callable[[ByteSource, int, InputLimits], InstanceHeader] = inspect_instance,
        clock: Callable[[], int] = now_ms,
        commit_gather_s: float = 0.0,
    ) -> None:
        self._blobs = blobs
        self._receipts = receipts
        self._bus = bus
        self._topics = topics
        self.max_instance_bytes = max_instance_bytes
        self._publish_timeout_s = publish_timeout_s
        self._stats = stats
        self._inspect = inspect
        self._limits = limits
        self._clock = clock
        self._tracer = trace.get_tracer("imx.ingest")
        self._outcomes = metrics.get_meter("imx.ingest").create_counter(
            "imx.ingest.instances", unit="{instance}", description="instances received, by channel and outcome"
        )
        self.commits = CommitGroup(receipts, self._publish_all, clock, gather_s=commit_gather_s)

    def accept(
        self,
        data: bytes,
        source_org: str,
        channel: Channel,
        requested_destination: str = "",
        expected: Expected = Expected(),
    ) -> AcceptanceResult:
        """Accept one Part 10 instance from an authenticated organisation.

        Raises IngestUnavailable when a dependency fails (the caller reports a transient failure).
        """
        return self._accept_input(_BytesInput(data), source_org, channel, requested_destination, expected)

    def accept_file(
        self,
        path: Path,
        source_org: str,
        channel: Channel,
        requested_destination: str = "",
        expected: Expected = Expected(),
        preamble_written_zero: bool = False,
        sha256: str | None = None,
        received: tuple[int, int] | None = None,
    ) -> AcceptanceResult:
        """`accept` for a Part 10 file the caller hands over: when the instance is stored, the file is
        moved into the blob store and `path` is gone; otherwise it is left for the caller to remove.
        `preamble_written_zero`: the caller itself wrote the file's first 128 bytes as zeros (a C-STORE
        data set carries no preamble), so they are not read and rewritten here. `sha256`: the file's
        hash, when the caller computed it as it wrote the file (with `preamble_written_zero` only), so
        the file is not read again to hash it. `received`: (descriptor, size) of the file as its
        writer holds it, the descriptor open for reading and left open for the caller to close; the
        instance is read through it, so the file is not opened again here."""
        try:
            source = _FileInput(path, preamble_written_zero, sha256, received)
        except OSError as exc:
            raise IngestUnavailable(f"received file unreadable: {type(exc).__name__}") from exc
        return self._accept_input(source, source_org, channel, requested_destination, expected)

    def _accept_input(
        self,
        source: _Input,
        source_org: str,
        channel: Channel,
        requested_destination: str,
        expected: Expected,
    ) -> AcceptanceResult:
        with self._tracer.start_as_current_span("ingest accept", kind=trace.SpanKind.PRODUCER) as span:
            span.set_attribute("imx.channel", channel)
            span.set_attribute("imx.org", source_org)
            try:
                result = self._accept(source, source_org, channel, requested_destination, expected)
            except EventRefused as exc:  # stays so until an operator acts: said apart from an outage
                span.set_status(trace.Status(trace.StatusCode.ERROR, type(exc).__name__))
                self._count(channel, "refused-by-broker")
                log.warning(
                    "instance's event refused by the broker: the ingested topic's max.message.bytes is too low",
                    extra={"org": source_org, "channel": channel},
                )
                raise
            except IngestUnavailable as exc:
                span.set_status(trace.Status(trace.StatusCode.ERROR, type(exc).__name__))
                self._count(channel, "unavailable")
                raise
            span.set_attribute("imx.outcome", _outcome(result))
            self._count(channel, _outcome(result))
            return result

    def reject_unread(self, source_org: str, channel: Channel, size: int) -> Rejected:
        """An input over the size limit that was never read whole: announce it, store nothing."""
        result = self._quarantine(source_org, channel, TOO_LARGE, str(self.max_instance_bytes), sha256="", size=size)
        self._count(channel, _outcome(result))
        return result

    def _accept(
        self,
        source: _Input,
        source_org: str,
        channel: Channel,
        requested_destination: str,
        expected: Expected,
    ) -> AcceptanceResult:
        if self._stats is not None and self._stats.paused:
            raise IngestPaused("ingest is paused")
        try:
            with source.mapped() as data:
                header = self._inspect(data, self.max_instance_bytes, self._limits)
        except InvalidInstance as invalid:
            stored = invalid.reason != TOO_LARGE  # keep the disk for inputs someone can look at
            sha256 = self._store(source) if stored else source.sha256()
            return self._quarantine(source_org, channel, invalid.reason, invalid.detail, sha256, source.size, stored)
        mismatch = expected.mismatch(header)
        if mismatch is not None:
            # Announced like any refused input (nothing stored: the sender keeps it), so audit can show it.
            refused = self._quarantine(source_org, channel, *mismatch, sha256=source.sha256(), size=source.size)
            return replace(
                refused,
                study_instance_uid=header.study_instance_uid,
                sop_class_uid=header.sop_class_uid,
                sop_instance_uid=header.sop_instance_uid,
            )

        with self.commits.expecting() as on_its_way:  # a group being gathered may wait for this one
            sha256 = self._store(source)
            event_id = ingested_event_id(source_org, header.sop_instance_uid, sha256, requested_destination)

            def message(received_at_ms: int) -> OutgoingMessage:
                event = instance_ingested(
                    header=header,
                    sha256=sha256,
                    size=source.size,
                    source_org=source_org,
                    channel=channel,
                    requested_destination=requested_destination,
                    event_id=event_id,
                    received_at_ms=received_at_ms,
                )
                return event_message(self._topics.ingested, event, header.study_instance_uid)

            outcome = self.commits.commit(Commit(event_id, message), on_its_way)
        self._record()
        if outcome is Outcome.DUPLICATE:
            log.debug("duplicate instance", extra={"event_id": event_id, "org": source_org, "channel": channel})
            return Duplicate(event_id, header.study_instance_uid, header.sop_class_uid, header.sop_instance_uid, sha256)
        log.debug("instance ingested", extra={"event_id": event_id, "org": source_org, "channel": channel})
        return Accepted(event_id, header.study_instance_uid, header.sop_class_uid, header.sop_instance_uid, sha256)

    def _quarantine(
        self, source_org: str, channel: str, reason: str, detail: str, sha256: str, size: int, stored: bool = False
    ) -> Rejected:
        unaccepted = Unaccepted(source_org, channel, sha256, size, stored, received_at_ms=self._clock())
        event = quarantined("ingest", reason, detail, unaccepted)
        self._publish(self._topics.quarantine, event, "")
        self._record(failed=True)
        log.warning(
            "input quarantined",
            extra={
                "reason": reason,
                "tag": detail,
                "org": source_org,
                "channel": channel,
                "event_id": event.meta.event_id,
            },
        )
        return Rejected(reason, detail, quarantined=True)

    def _store(self, source: _Input) -> str:
        try:
            return source.store(self._blobs)
        except OSError as exc:
            raise IngestUnavailable(f"blob store unavailable: {type(exc).__name__}") from exc

    def _publish(self, topic: str, event: Message, study_uid: str) -> None:
        self._publish_all([event_message(topic, event, study_uid)])

    def _publish_all(self, messages: Sequence[OutgoingMessage]) -> None:
        try:
            self._bus.publish(messages, timeout_s=self._publish_timeout_s)
        except RecordRefused as exc:  # a topic set to take less than the default
            raise EventRefused(f"bus refused the event: {exc}") from exc
        except TransientError as exc:
            raise IngestUnavailable(f"bus unavailable: {exc}") from exc
        except KafkaError as exc:  # raised by the producer's send() itself, e.g. no metadata in time
            raise IngestUnavailable(f"bus unavailable: {type(exc).__name__}") from exc

    def _record(self, failed: bool = False) -> None:
        if self._stats is not None:
            self._stats.record(0 if failed else 1, 1 if failed else 0)

    def _count(self, channel: str, outcome: str) -> None:
        self._outcomes.add(1, {"channel": channel, "outcome": outcome})


def _outcome(result: AcceptanceResult) -> str:
    if isinstance(result, Accepted):
        return "accepted"
    if isinstance(result, Duplicate):
        return "duplicate"
    return "rejected"
