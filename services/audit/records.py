"""Any message from any imx topic → one audit record (pure).

A record keeps only what the trail needs: UIDs, organisation, partner and route ids, profile name and
version, channel, status, machine-readable reasons and timestamps. Routing attributes (a study
description can carry PHI), blob references and retrieval URLs are never copied.

Audit reads the pipeline's topics, the partners' DICOMweb retrievals (`imx.access.v1`), the services'
security alerts (`imx.alerts.v1`) and each
partner's receipts topic (what its gateway stored), not the partners' feeds: the outcome event says
what was delivered. On a receipts topic the partner is the one the topic belongs to (only that
partner may write it), whatever the payload claims. `_id` is `<event_type>:<event_id>` and event
ids are deterministic, so a replayed message maps onto the record it already produced.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, TypedDict, cast

from google.protobuf.message import DecodeError

from services.common.events import EVENT_TYPE_HEADER, event_id
from services.common.messages import IncomingMessage, PermanentError
from services.common.partner_receipts import SUPERSEDED, check_receipt
from services.common.topics import Topics
from services.proto_gen.imx.v1 import events_pb2

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
_MAX_TEXT = 1000


class EventType(StrEnum):
    INGESTED = "ingested"
    ROUTED = "routed"
    PREPARED = "prepared"
    OUTCOME = "outcome"
    RECEIPT = "receipt"
    QUARANTINED = "quarantined"
    DEAD_LETTER = "dead_letter"
    RETRIEVAL = "retrieval"
    ALERT = "alert"


# The order of the hops of one instance, to break ties between events of the same millisecond.
HOP_ORDER: dict[EventType, int] = {t: i for i, t in enumerate(EventType)}


class SourceRef(TypedDict):
    """Where a dead-lettered message was read from (never its value)."""

    topic: str | None
    partition: int | None
    offset: int | None
    event_type: str | None


class AuditRecord(TypedDict):
    _id: str
    event_type: str
    event_id: str
    causation_id: str | None
    topic: str
    study_uid: str | None
    series_uid: str | None
    sop_uid: str | None
    delivered_study_uid: str | None
    delivered_series_uid: str | None
    delivered_sop_uid: str | None
    source_org: str | None
    channel: str | None
    requested_partner_id: str | None
    partner_id: str | None
    route_id: str | None
    profile: str | None
    profile_version: int | None
    deidentified: bool | None
    stage: str | None
    status: str | None
    reason: str | None
    detail: str | None
    source: SourceRef | None
    occurred_at: datetime
    ingested_at: datetime | None
    recorded_at: datetime
    modality: str | None  # as received (InstanceRef.modality), for volumes per modality
    size_bytes: int | None  # the object's size (BlobRef.size) on ingested and prepared events


RECORD_FIELDS: tuple[str, ...] = tuple(AuditRecord.__annotations__)
_BLANK: dict[str, Any] = dict.fromkeys(RECORD_FIELDS)
_VALUES: dict[EventType, str] = {t: t.value for t in EventType}  # an enum's .value is a descriptor call

# Message class name (the imx-event-type header) → event type, for topics audit does not know by name.
_HEADER_TYPES: dict[str, EventType] = {
    "InstanceIngested": EventType.INGESTED,
    "InstanceRouted": EventType.ROUTED,
    "InstancePrepared": EventType.PREPARED,
    "DeliveryOutcome": EventType.OUTCOME,
    "Quarantined": EventType.QUARANTINED,
    "PartnerRetrieval": EventType.RETRIEVAL,
    "SecurityAlert": EventType.ALERT,
}


def subscription_pattern(topics: Topics) -> str:
    """One regex for every topic audit reads: the pipeline's fixed topics and every receipts topic."""
    receipts = topics.receipts_pattern
    if not (receipts.startswith("^") and receipts.endswith("$")):
        raise ValueError("Topics.receipts_pattern is expected to be anchored with ^ and $")
    alternatives = [re.escape(name) for name in topics.pipeline()] + [receipts[1:-1]]
    return "^(?:" + "|".join(alternatives) + ")$"


def event_type_for(topic: str, headers: Mapping[str, bytes], topics: Topics) -> EventType | None:
    """The topic decides; the imx-event-type header only names events on topics audit does not know.

    The dead-letter topic comes first: a dead letter keeps its original headers, including the
    original event type.
    """
    by_topic = _types_by_topic(topics)
    if topic in by_topic:
        return by_topic[topic]
    if topics.receipts_partner(topic) is not None:
        return EventType.RECEIPT
    return _HEADER_TYPES.get(headers.get(EVENT_TYPE_HEADER, b"").decode("ascii", "replace"))


# Every record asks this: the topic names are built once per Topics.
@functools.cache
def _types_by_topic(topics: Topics) -> dict[str, EventType]:
    return {
        topics.dead_letter: EventType.DEAD_LETTER,
        topics.ingested: EventType.INGESTED,
        **dict.fromkeys(topics.routed_lanes, EventType.ROUTED),
        **dict.fromkeys(topics.prepared_lanes, EventType.PREPARED),
        topics.outcomes: EventType.OUTCOME,
        topics.quarantine: EventType.QUARANTINED,
        topics.access: EventType.RETRIEVAL,
        topics.alerts: EventType.ALERT,
    }


def to_datetime(epoch_ms: int) -> datetime:
    return _EPOCH + timedelta(0, 0, 0, epoch_ms)  # positional: half the cost of milliseconds=


_LAST_MS = 253402300799999  # 9999-12-31T23:59:59.999Z, the last moment a datetime holds


def _event_time(epoch_ms: int) -> datetime | None:
    """An event's own time, None when there is none or none a date can hold (it raised OverflowError,
    which no retry mends: the record stalled the consumer)."""
    return to_datetime(epoch_ms) if 0 < epoch_ms <= _LAST_MS else None


# A partner's gateway writes its receipts topic, so a receipt's times (stored, ingested, the record's
# CreateTime) are the partner's claims: one dated 9999 moved the trail's last day there and every view
# without dates answered 500 or nothing. A claim outside this window around audit's own clock is
# replaced by the time audit recorded it. Behind: audit may be down for days and read its backlog after.
PARTNER_CLOCK_AHEAD = timedelta(minutes=5)
PARTNER_CLAIM_BEHIND = timedelta(days=31)
TIME_IGNORED = "the partner's time was out of range; recorded at audit's"


def _partner_time(claimed_ms: int, recorded: datetime) -> datetime | None:
    at = _event_time(claimed_ms)
    if at is None or not recorded - PARTNER_CLAIM_BEHIND <= at <= recorded + PARTNER_CLOCK_AHEAD:
        return None
    return at


def delivered_sop(record: AuditRecord) -> str | None:
    """The instance as its partner received it: the copy's UID, or the received one when passed through."""
    return record["delivered_sop_uid"] or record["sop_uid"]


def to_epoch_ms(moment: datetime) -> int:
    """Naive datetimes are taken as UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // _MS


def truncate_ms(moment: datetime) -> datetime:
    """BSON dates hold milliseconds: records carry exactly what MongoDB will give back (in UTC)."""
    if moment.tzinfo is UTC:  # every record's own times: no arithmetic needed
        return moment.replace(microsecond=moment.microsecond // 1000 * 1000)
    return to_datetime(to_epoch_ms(moment))


def build_record(message: IncomingMessage, topics: Topics, recorded_at: datetime) -> AuditRecord:
    """The audit record of one message. Raises PermanentError for an event that cannot be read
    (it goes to the dead-letter topic, where it is recorded as a dead letter: that path never raises)."""
    event_type = event_type_for(message.topic, message.headers, topics)
    if event_type is None:
        raise PermanentError("message on an unknown topic without a known imx-event-type header")
    if event_type is EventType.DEAD_LETTER:
        return dead_letter_record(message, topics, recorded_at)
    return _event_record(event_type, message, topics, recorded_at)


def _event_record(
    event_type: EventType, message: IncomingMessage, topics: Topics, recorded_at: datetime
) -> AuditRecord:
    decode, fill = _DECODERS[event_type]
    try:
        event = decode(message.value)
    except DecodeError as exc:
        raise PermanentError(f"undecodable {event_type.value} event") from exc
    if not event.meta.event_id:
        raise PermanentError(f"{event_type.value} event without meta.event_id")
    record = _empty_record(event_type, event.meta.event_id, message, recorded_at)
    record["causation_id"] = event.meta.causation_id or None
    record["occurred_at"] = _event_time(event.meta.occurred_at_ms) or record["occurred_at"]
    record["ingested_at"] = _event_time(event.meta.ingested_at_ms)
    fill(record, event, message.topic, topics)
    return record


def _empty_record(event_type: EventType, ev_id: str, message: IncomingMessage, recorded_at: datetime) -> AuditRecord:
    """Every field present, in AuditRecord's order, None but the event's names and times: a copy of
    _BLANK with seven fields set costs a third of building the 29-field dict by keywords."""
    recorded = truncate_ms(recorded_at)
    kind = _VALUES[event_type]
    record = cast(AuditRecord, _BLANK.copy())
    record["_id"] = f"{kind}:{ev_id}"
    record["event_type"] = kind
    record["event_id"] = ev_id
    record["topic"] = message.topic
    # The broker's timestamp stands in when an event carries no time of its own.
    record["occurred_at"] = _event_time(message.timestamp_ms) or recorded
    record["recorded_at"] = recorded
    return record


def _text(value: str) -> str | None:
    return value[:_MAX_TEXT] or None


def _received(record: AuditRecord, instance: Any) -> None:
    record["study_uid"] = instance.study_instance_uid or None
    record["series_uid"] = instance.series_instance_uid or None
    record["sop_uid"] = instance.sop_instance_uid or None
    record["modality"] = instance.modality or None


def _delivered(record: AuditRecord, instance: Any) -> None:
    record["delivered_study_uid"] = instance.study_instance_uid or None
    record["delivered_series_uid"] = instance.series_instance_uid or None
    record["delivered_sop_uid"] = instance.sop_instance_uid or None


def _remapped(source: Any, delivered: Any) -> bool:
    return (source.study_instance_uid, source.series_instance_uid, source.sop_instance_uid) != (
        delivered.study_instance_uid,
        delivered.series_instance_uid,
        delivered.sop_instance_uid,
    )


def _fill_ingested(record: AuditRecord, event: Any, topic: str, topics: Topics) -> None:
    # routing_attributes are deliberately not read: free text such as a study description may carry PHI.
    _received(record, event.instance)
    record["source_org"] = event.source_org or None
    record["channel"] = event.channel or None
    record["requested_partner_id"] = event.requested_destination or None
    record["size_bytes"] = event.blob.size if event.HasField("blob") else None


def _fill_routed(record: AuditRecord, event: Any, topic: str, topics: Topics) -> None:
    _received(record, event.instance)
    record["source_org"] = event.source_org or None
    record["route_id"] = event.route_id or None
    record["partner_id"] = event.partner_id or None
    record["profile"] = event.profile or None
    record["profile_version"] = event.profile_version if event.profile else None


def _fill_prepared(record: AuditRecord, event: Any, topic: str, topics: Topics) -> None:
    _received(record, event.source_instance)
    if event.deidentified or _remapped(event.source_instance, event.instance):
        _delivered(record, event.instance)
    record["source_org"] = event.source_org or None
    record["route_id"] = event.route_id or None
    record["partner_id"] = event.partner_id or None
    record["profile"] = event.profile or None
    record["profile_version"] = event.profile_version if event.profile else None
    record["deidentified"] = event.deidentified
    record["size_bytes"] = event.blob.size if event.HasField("blob") else None


def _fill_receipt(record: AuditRecord, event: Any, topic: str, topics: Topics) -> None:
    # A receipt names the instance as the partner received it (remapped UIDs when de-identified).
    check_receipt(event)
    _delivered(record, event.instance)
    partner = topics.receipts_partner(topic)
    record["partner_id"] = partner
    # Keyed by the partner whose topic it came from as well: the id is the partner's to write, and one
    # partner publishing another's receipt id first (computable from a study both received) had the
    # genuine receipt dropped as a replay.
    record["_id"] = f"receipt:{partner}:{event.meta.event_id}"
    record["causation_id"] = event.delivery_id or record["causation_id"]
    record["status"] = store_status_name(event.status)
    if event.status == events_pb2.STORE_STATUS_STORED and event.detail == SUPERSEDED:
        # Settled without storing: the partner holds a newer send of the instance. Not a store (no
        # turnaround, no "stored" in the trail), nor a failure.
        record["status"] = "superseded"
    record["stage"] = "gateway"
    recorded = record["recorded_at"]
    claimed = event.stored_at_ms or event.meta.occurred_at_ms
    stored = _partner_time(claimed, recorded)
    record["occurred_at"] = stored or recorded
    ingested = _partner_time(event.meta.ingested_at_ms, recorded)
    # No turnaround from a receipt whose stored time was not believed: it would end when audit read it.
    record["ingested_at"] = ingested if stored is not None and ingested is not None and ingested <= stored else None
    ignored = TIME_IGNORED if claimed and stored is None else ""
    record["detail"] = _text("; ".join(part for part in (event.detail, ignored) if part))


def _fill_retrieval(record: AuditRecord, event: Any, topic: str, topics: Topics) -> None:
    _delivered(
        record,
        events_pb2.InstanceRef(
            study_instance_uid=event.study_instance_uid,
            series_instance_uid=event.series_instance_uid,
            sop_instance_uid=event.sop_instance_uid,
        ),
    )
    record["partner_id"] = event.partner_id or None
    record["stage"] = "dicomweb"
    record["status"] = str(event.http_status) if event.http_status else None
    record["reason"] = _text(event.action)
    record["detail"] = _text(f"instances={event.instances} bytes={event.bytes}")


def _fill_outcome(record: AuditRecord, event: Any, topic: str, topics: Topics) -> None:
    _received(record, event.source_instance)
    if _remapped(event.source_instance, event.instance):
        _delivered(record, event.instance)
    record["source_org"] = event.source_org or None
    record["route_id"] = event.route_id or None
    record["partner_id"] = event.partner_id or None
    record["profile"] = event.profile or None
    record["status"] = delivery_status_name(event.status)
    record["detail"] = _text(event.detail)


def _fill_quarantined(record: AuditRecord, event: Any, topic: str, topics: Topics) -> None:
    _received(record, event.instance)
    record["source_org"] = event.source_org or None
    record["partner_id"] = event.partner_id or None
    record["route_id"] = event.route_id or None
    record["stage"] = _text(event.stage)
    record["status"] = "quarantined"
    record["reason"] = _text(event.reason)
    record["detail"] = _text(event.detail)


def _fill_alert(record: AuditRecord, event: Any, topic: str, topics: Topics) -> None:
    # Ids and figures only: which partner, which threshold, how far along, how much is unread.
    record["partner_id"] = event.partner_id or None
    record["stage"] = _text(event.service)
    record["status"] = "warning"
    record["reason"] = _text(event.kind)
    record["detail"] = _text(
        f"threshold={event.threshold:g} retention_used={event.retention_used:.3f} unread={event.unread} "
        f"expired={event.expired} retention_ms={event.retention_ms} oldest_unread_age_ms={event.oldest_unread_age_ms}"
    )


def delivery_status_name(status: int) -> str:
    """DELIVERY_STATUS_DELIVERED → "delivered"; an unknown number is kept as a number."""
    try:
        name: str = events_pb2.DeliveryStatus.Name(status)
    except ValueError:
        return str(status)
    return name.removeprefix("DELIVERY_STATUS_").lower()


def store_status_name(status: int) -> str:
    """STORE_STATUS_DEAD_LETTERED → "dead_lettered"; an unknown number is kept as a number."""
    try:
        name: str = events_pb2.StoreStatus.Name(status)
    except ValueError:
        return str(status)
    return name.removeprefix("STORE_STATUS_").lower()


Fill = Callable[[AuditRecord, Any, str, Topics], None]
_DECODERS: dict[EventType, tuple[Callable[[bytes], Any], Fill]] = {
    EventType.INGESTED: (events_pb2.InstanceIngested.FromString, _fill_ingested),
    EventType.ROUTED: (events_pb2.InstanceRouted.FromString, _fill_routed),
    EventType.PREPARED: (events_pb2.InstancePrepared.FromString, _fill_prepared),
    EventType.OUTCOME: (events_pb2.DeliveryOutcome.FromString, _fill_outcome),
    EventType.RECEIPT: (events_pb2.DeliveryReceipt.FromString, _fill_receipt),
    EventType.QUARANTINED: (events_pb2.Quarantined.FromString, _fill_quarantined),
    EventType.RETRIEVAL: (events_pb2.PartnerRetrieval.FromString, _fill_retrieval),
    EventType.ALERT: (events_pb2.SecurityAlert.FromString, _fill_alert),
}

# Identifying fields a dead letter borrows from the original event when that can still be decoded.
_BORROWED = (
    "study_uid",
    "series_uid",
    "sop_uid",
    "delivered_study_uid",
    "delivered_series_uid",
    "delivered_sop_uid",
    "source_org",
    "channel",
    "partner_id",
    "route_id",
    "profile",
    "profile_version",
    "modality",
)


def dead_letter_record(message: IncomingMessage, topics: Topics, recorded_at: datetime) -> AuditRecord:
    """Total: whatever the headers and value hold, this returns a record (the value itself is never kept).

    It must never raise, or audit would dead-letter its own dead letters for ever."""

    def header(name: str) -> str | None:
        return _text(message.headers.get(name, b"").decode("utf-8", "replace"))

    def header_int(name: str) -> int | None:
        value = header(name)
        return int(value) if value is not None and value.isdigit() else None

    source_topic = header("imx-source-topic")
    partition, offset = header_int("imx-source-partition"), header_int("imx-source-offset")
    stage = header("imx-stage")
    ident: tuple[str, ...]
    if source_topic is None or partition is None or offset is None:  # not made by the bus: use its own place
        ident = ("dead-letter", message.topic, str(message.partition), str(message.offset))
    else:
        ident = ("dead-letter", source_topic, str(partition), str(offset), stage or "")
    record = _empty_record(EventType.DEAD_LETTER, event_id(*ident), message, recorded_at)
    original_type = None
    if source_topic is not None:
        original_type = event_type_for(source_topic, message.headers, topics)
    if original_type is not None and original_type is not EventType.DEAD_LETTER:
        _borrow_from_original(record, original_type, message, source_topic or "", topics)
    record["stage"] = stage
    record["status"] = "dead-lettered"
    record["reason"] = header("imx-error-type")
    record["detail"] = header("imx-error")  # bus.describe_error: text only for PHI-safe errors
    record["source"] = SourceRef(
        topic=source_topic,
        partition=partition,
        offset=offset,
        event_type=original_type.value if original_type else None,
    )
    return record


def _borrow_from_original(
    record: AuditRecord, original_type: EventType, message: IncomingMessage, source_topic: str, topics: Topics
) -> None:
    original_message = IncomingMessage(
        topic=source_topic, partition=0, offset=0, key=None, value=message.value, headers=message.headers
    )
    try:
        original = _event_record(original_type, original_message, topics, record["recorded_at"])
    except Exception:  # an undecodable original is the usual reason for a dead letter
        return
    for name in _BORROWED:
        record[name] = original[name]  # type: ignore[literal-required]
    record["causation_id"] = original["event_id"]
