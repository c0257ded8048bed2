"""Deid stage: an InstanceRouted in; the instance as its partner will receive it out (InstancePrepared),
or a quarantine event when it cannot be released safely.

A pure core in a thin I/O shell, as in the other stages:
- `plan` decides what happens to an event: passed through, quarantined, or de-identified with a
  profile and the partner's key (the configuration comes in as lookups);
- `prepared_event` and `quarantine_event` build the outgoing messages from that decision and, for a
  de-identified instance, from what was `released`;
- the shell (`prepare_event`, run by `DeidHandler`) adds the one effect: `release_instance`
  reads the input blob, de-identifies it and writes the output blob; the stage's handler makes a
  batch's output blobs durable together before their events are published (batch_writes.py).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from services.common.blob_store import BlobStore, LocalBlobStore
from services.common.events import derived_meta, event_message, now_ms
from services.common.failures import input_problem
from services.common.lanes import lane_for
from services.common.messages import IncomingMessage, OutgoingMessage
from services.common.quarantine_events import UNKNOWN_PARTNER, UNKNOWN_PROFILE, quarantined
from services.common.topics import Topics
from services.deid.batch_writes import BatchedBlobWrites
from services.deid.engine import DeidError, DeidResult, PhiLeak, Profile
from services.deid.engine.errors import UndecodableInput, tag_text
from services.deid.files import MAX_INFLATED_BYTES, blob_source, deidentified
from services.deid.profile_documents import profile_version_number
from services.proto_gen.imx.v1 import events_pb2

PutSpliced = Callable[[bytes, memoryview, str, int], tuple[str, int]]
"""SplicingBlobStore.put_spliced."""
ProfileLookup = Callable[[str, int], Profile | None]
"""(name, version) -> the profile; version 0 = the current one (routing leaves it 0)."""


@dataclass(frozen=True)
class Refusal:
    reason: str
    detail: str = ""


def refusal_for(error: DeidError) -> Refusal:
    """Machine-readable reason (kebab-case, as on every quarantine event) and a PHI-free detail."""
    reason = error.reason.replace("_", "-")
    if isinstance(error, PhiLeak):
        return Refusal(reason, tag_text(error.tag) if error.tag is not None else "encoded-header")
    return Refusal(reason, str(getattr(error, "detail", ""))[:200])


def undecodable(exc: Exception) -> UndecodableInput | None:
    """The input problem `exc` names (failures.classify), as a de-identification error; None for a
    transient failure or a defect, which the bus retries or dead-letters."""
    detail = input_problem(exc)
    return None if detail is None else UndecodableInput(detail)


# The pure core: decisions and events, no blob store.


@dataclass(frozen=True)
class PassThrough:
    """A care transfer: the partner receives the instance exactly as it was sent."""


@dataclass(frozen=True)
class Quarantine:
    refusal: Refusal


@dataclass(frozen=True)
class Deidentify:
    profile: Profile
    key: bytes


Plan = PassThrough | Quarantine | Deidentify


def plan(
    routed: events_pb2.InstanceRouted, profiles: ProfileLookup, recipient_key: Callable[[str], bytes | None]
) -> Plan:
    """What happens to `routed`. The lookups are the stage's configuration (cached from MongoDB; a
    failing one raises for the bus to retry) and each is asked only when its answer matters: no profile
    for a pass-through, no key for an unknown profile."""
    if not routed.profile:
        return PassThrough()
    profile = profiles(routed.profile, routed.profile_version)
    if profile is None:
        wanted = f"{routed.profile} v{routed.profile_version}" if routed.profile_version else routed.profile
        return Quarantine(Refusal(UNKNOWN_PROFILE, wanted))
    key = recipient_key(routed.partner_id)
    if key is None:
        return Quarantine(Refusal(UNKNOWN_PARTNER, routed.partner_id))
    return Deidentify(profile, key)


@dataclass(frozen=True)
class Released:
    """A de-identified instance as stored: the profile version applied, the instance as the partner
    sees it, and its blob."""

    profile_version: int
    instance: events_pb2.InstanceRef
    blob: events_pb2.BlobRef


def released(profile: Profile, result: DeidResult, sha256: str, size: int) -> Released:
    """What the event says of `result`, written as the blob `sha256` of `size` bytes."""
    return Released(
        # The version actually applied, so audit can show exactly which rules an instance went through.
        profile_version=profile_version_number(profile),
        instance=events_pb2.InstanceRef(
            study_instance_uid=result.study_instance_uid,
            series_instance_uid=result.series_instance_uid,
            sop_instance_uid=result.sop_instance_uid,
            sop_class_uid=result.sop_class_uid,
            transfer_syntax_uid=result.transfer_syntax_uid,
            modality=result.modality,
        ),
        blob=events_pb2.BlobRef(sha256=sha256, size=size),
    )


def prepared_event(
    routed: events_pb2.InstanceRouted,
    topics: Topics,
    clock: Callable[[], int] = now_ms,
    release: Released | None = None,
) -> list[OutgoingMessage]:
    """The InstancePrepared for `routed`: de-identified as `release` says, or (None) passed through."""
    prepared = events_pb2.InstancePrepared(
        meta=derived_meta("prepared", routed.meta, clock=clock),
        source_instance=routed.instance,
        source_org=routed.source_org,
        route_id=routed.route_id,
        partner_id=routed.partner_id,
        profile=routed.profile,
        priority=routed.priority,
        source_blob=routed.blob,
    )
    if release is None:
        prepared.instance.CopyFrom(routed.instance)
        prepared.blob.CopyFrom(routed.blob)
    else:
        prepared.deidentified = True
        prepared.profile_version = release.profile_version
        prepared.blob.CopyFrom(release.blob)
        prepared.instance.CopyFrom(release.instance)
    topic = topics.lane(topics.prepared, lane_for(routed.priority))
    return [event_message(topic, prepared, routed.instance.study_instance_uid)]


def quarantine_event(
    routed: events_pb2.InstanceRouted, refusal: Refusal, topics: Topics, clock: Callable[[], int] = now_ms
) -> list[OutgoingMessage]:
    event = quarantined("deid", refusal.reason, refusal.detail, routed, clock)
    return [event_message(topics.quarantine, event, routed.instance.study_instance_uid)]


# The I/O shell.


def release_instance(
    blobs: BlobStore,
    blob: events_pb2.BlobRef,
    how: Deidentify,
    scratch: Path | None = None,
    max_inflated_bytes: int = MAX_INFLATED_BYTES,
    splice: bool = False,
) -> Released | Refusal:
    """Read `blob`, de-identify it and write the result to `blobs`; a Refusal when the engine refuses
    the input or the decoder cannot read it. A disk or store failure reading or writing is raised (the
    bus retries it), never a Refusal.

    A large input is mapped, not read (files.py): the result's pixel data are a view into it until
    written. A deflated one is inflated into a temporary file in `scratch` (beside the blobs), removed
    when `held` closes, whatever happens. `splice`: store the result as a splice record of its header
    and the input's tail where it can be (services/common/blob_splices.py)."""
    with blob_source(blobs, blob) as data, ExitStack() as held:
        try:
            result = held.enter_context(deidentified(data, how.profile, how.key, scratch, max_inflated_bytes))
        except DeidError as error:
            return refusal_for(error)
        except Exception as exc:
            problem = undecodable(exc)
            if problem is None:
                raise
            return refusal_for(problem)
        sha, size = _write(blobs, result, blob, splice)
    return released(how.profile, result, sha, size)


def _write(blobs: BlobStore, result: DeidResult, source: events_pb2.BlobRef, splice: bool) -> tuple[str, int]:
    """The result as a new object: spliced (only its header written; its tail refers to the stored
    input) when the engine's fast path gave the input's own tail, else written whole."""
    offset = result.source_offset
    # The store's own method, not isinstance(blobs, SplicingBlobStore): a runtime Protocol check
    # costs ~20 us per instance, and asks no more than this.
    put_spliced: PutSpliced | None = getattr(blobs, "put_spliced", None) if splice else None
    if put_spliced is not None and offset is not None and len(result.chunks) == 2:
        head, tail = result.chunks
        if isinstance(head, bytes) and isinstance(tail, memoryview) and offset + len(tail) == source.size:
            return put_spliced(head, tail, source.sha256, offset)
    written = blobs.put_chunks(result.chunks)
    # Written whole, the input is read no more in the normal path (delivery serves the output):
    # BatchedBlobWrites drops its cached pages once the output is durable.
    finished_with: Callable[[str], None] | None = getattr(blobs, "finished_with", None)
    if finished_with is not None:
        finished_with(source.sha256)
    return written


def prepare_event(
    routed: events_pb2.InstanceRouted,
    profiles: ProfileLookup,
    recipient_key: Callable[[str], bytes | None],
    blobs: BlobStore,
    topics: Topics,
    clock: Callable[[], int] = now_ms,
    scratch: Path | None = None,
    max_inflated_bytes: int = MAX_INFLATED_BYTES,
    splice: bool = False,
) -> list[OutgoingMessage]:
    """`plan`, then for a de-identification `release_instance`, then the event. `scratch`: where a
    deflated input is inflated (files.py `deidentified`), beside the blobs."""
    decided = plan(routed, profiles, recipient_key)
    if isinstance(decided, PassThrough):
        return prepared_event(routed, topics, clock)
    if isinstance(decided, Quarantine):
        return quarantine_event(routed, decided.refusal, topics, clock)
    # A prepared instance's time is when its preparation began; a refusal's, when it was refused.
    began = clock()
    outcome = release_instance(blobs, routed.blob, decided, scratch, max_inflated_bytes, splice)
    if isinstance(outcome, Refusal):
        return quarantine_event(routed, outcome, topics, clock)
    return prepared_event(routed, topics, lambda: began, outcome)


class DeidHandler:
    """The stage's handler: `prepare_event` per record, its blob writes settled once per batch by
    `flush`, which the bus runs before it publishes the batch's outputs (batch_writes.py)."""

    def __init__(
        self,
        profiles: ProfileLookup,
        recipient_key: Callable[[str], bytes | None],
        blobs: LocalBlobStore,
        topics: Topics,
        scratch: Path | None = None,
        max_inflated_bytes: int = MAX_INFLATED_BYTES,
        clock: Callable[[], int] = now_ms,
        splice: bool = True,
    ) -> None:
        self._profiles, self._recipient_key, self._splice = profiles, recipient_key, splice
        self._writes = BatchedBlobWrites(blobs)
        self._topics, self._scratch, self._max_inflated_bytes, self._clock = topics, scratch, max_inflated_bytes, clock

    def __call__(self, message: IncomingMessage) -> list[OutgoingMessage]:
        routed = events_pb2.InstanceRouted.FromString(message.value)
        return prepare_event(
            routed,
            self._profiles,
            self._recipient_key,
            self._writes,
            self._topics,
            self._clock,
            self._scratch,
            self._max_inflated_bytes,
            self._splice,
        )

    def flush(self) -> None:
        self._writes.settle()
