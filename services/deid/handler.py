"""Deid stage: an InstanceRouted in; the instance as its partner will receive it out (InstancePrepared),
or a quarantine event when it cannot be released safely."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from services.common.blob_store import BlobStore
from services.common.events import derived_meta, event_message, now_ms
from services.common.failures import input_problem
from services.common.lanes import lane_for
from services.common.messages import IncomingMessage, OutgoingMessage
from services.common.quarantine_events import UNKNOWN_PARTNER, UNKNOWN_PROFILE, quarantined
from services.common.topics import Topics
from services.deid.engine import DeidError, PhiLeak, Profile
from services.deid.engine.errors import UndecodableInput, tag_text
from services.deid.files import MAX_INFLATED_BYTES, blob_source, deidentified
from services.deid.profile_documents import profile_version_number
from services.proto_gen.imx.v1 import events_pb2

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


def _quarantine(
    routed: events_pb2.InstanceRouted, refusal: Refusal, topics: Topics, clock: Callable[[], int]
) -> list[OutgoingMessage]:
    event = quarantined("deid", refusal.reason, refusal.detail, routed, clock)
    return [event_message(topics.quarantine, event, routed.instance.study_instance_uid)]


def prepare_event(
    routed: events_pb2.InstanceRouted,
    profiles: ProfileLookup,
    recipient_key: Callable[[str], bytes | None],
    blobs: BlobStore,
    topics: Topics,
    clock: Callable[[], int] = now_ms,
    scratch: Path | None = None,
    max_inflated_bytes: int = MAX_INFLATED_BYTES,
) -> list[OutgoingMessage]:
    """`scratch`: where a deflated input is inflated (files.py `deidentified`), beside the blobs."""
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
    prepared_topic = topics.lane(topics.prepared, lane_for(routed.priority))
    if not routed.profile:
        # A care transfer: the partner receives the instance exactly as it was sent.
        prepared.instance.CopyFrom(routed.instance)
        prepared.blob.CopyFrom(routed.blob)
        return [event_message(prepared_topic, prepared, routed.instance.study_instance_uid)]

    profile = profiles(routed.profile, routed.profile_version)
    if profile is None:
        wanted = f"{routed.profile} v{routed.profile_version}" if routed.profile_version else routed.profile
        return _quarantine(routed, Refusal(UNKNOWN_PROFILE, wanted), topics, clock)
    key = recipient_key(routed.partner_id)
    if key is None:
        return _quarantine(routed, Refusal(UNKNOWN_PARTNER, routed.partner_id), topics, clock)
    # A disk or store failure reading or writing is retried, never quarantined. A large input is
    # mapped, not read (files.py): the result's pixel data are a view into it until written. A
    # deflated one is inflated into a temporary file, removed when `held` closes, whatever happens.
    with blob_source(blobs, routed.blob) as data, ExitStack() as held:
        try:
            result = held.enter_context(deidentified(data, profile, key, scratch, max_inflated_bytes))
        except DeidError as error:
            return _quarantine(routed, refusal_for(error), topics, clock)
        except Exception as exc:
            problem = undecodable(exc)
            if problem is None:
                raise
            return _quarantine(routed, refusal_for(problem), topics, clock)
        sha, size = blobs.put_chunks(result.chunks)
    prepared.deidentified = True
    # The version actually applied, so audit can show exactly which rules an instance went through.
    prepared.profile_version = profile_version_number(profile)
    prepared.blob.CopyFrom(events_pb2.BlobRef(sha256=sha, size=size))
    prepared.instance.CopyFrom(
        events_pb2.InstanceRef(
            study_instance_uid=result.study_instance_uid,
            series_instance_uid=result.series_instance_uid,
            sop_instance_uid=result.sop_instance_uid,
            sop_class_uid=result.sop_class_uid,
            transfer_syntax_uid=result.transfer_syntax_uid,
            modality=result.modality,
        )
    )
    return [event_message(prepared_topic, prepared, routed.instance.study_instance_uid)]


def build_deid_handler(
    profiles: ProfileLookup,
    recipient_key: Callable[[str], bytes | None],
    blobs: BlobStore,
    topics: Topics,
    scratch: Path | None = None,
    max_inflated_bytes: int = MAX_INFLATED_BYTES,
) -> Callable[[IncomingMessage], list[OutgoingMessage]]:
    def handle(message: IncomingMessage) -> list[OutgoingMessage]:
        routed = events_pb2.InstanceRouted.FromString(message.value)
        return prepare_event(
            routed, profiles, recipient_key, blobs, topics, scratch=scratch, max_inflated_bytes=max_inflated_bytes
        )

    return handle
