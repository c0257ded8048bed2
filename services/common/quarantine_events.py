"""The Quarantined event, built in one place for every stage (pure: no I/O; the time is passed in).

Its id is deterministic: a replay of the same input gives the same id, and consumers de-duplicate
on it (audit keys its record by it), so how each stage derives it is fixed and must not change:
- ingest quarantines an input no event exists for yet, so the input's own facts name it: the
  organisation, the channel, the content hash (or, for an input never read whole, its size and time)
  and the reason;
- routing, deid and delivery quarantine an event they read, so the id derives from that event's id
  (`derived_meta`): under "no-route" for routing (its one reason), "quarantine" for the others.

`reason` is a kebab-case code: the stage's own (below), or the code of the typed error that refused
the input (ingest: `InvalidInstance.reason`; deid: `DeidError.reason` through deid's `refusal_for`).
`detail` is machine-readable and PHI-free (proto/imx/v1/events.proto): a tag or keyword, a limit, an
error's type (`failures.input_problem`), a configured or validated name (profile, partner). Never a
value read from the input: those errors carry none by construction, and nothing here adds one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, overload

from services.common.events import derived_meta, event_id, now_ms
from services.proto_gen.imx.v1 import events_pb2

Stage = Literal["ingest", "routing", "deid", "delivery"]

# Reasons a stage names itself (deid and delivery both refuse an instance for a partner they do not know).
NO_ROUTE = "no-route"
UNKNOWN_PARTNER = "unknown-partner"
UNKNOWN_PROFILE = "unknown-profile"


@dataclass(frozen=True)
class Unaccepted:
    """An input ingest refused: no event was made for it, so these facts are all that identify it.

    `sha256` is "" when the input was never read whole (over the size limit); `stored` says whether
    the blob store holds it for operators to look at."""

    source_org: str
    channel: str
    sha256: str
    size: int
    stored: bool
    received_at_ms: int


Subject = Unaccepted | events_pb2.InstanceIngested | events_pb2.InstanceRouted | events_pb2.InstancePrepared

# What each stage reads, i.e. what it can quarantine.
_SUBJECTS: dict[Stage, type[Subject]] = {
    "ingest": Unaccepted,
    "routing": events_pb2.InstanceIngested,
    "deid": events_pb2.InstanceRouted,
    "delivery": events_pb2.InstancePrepared,
}


@overload
def quarantined(
    stage: Literal["ingest"], reason: str, detail: str, subject: Unaccepted, clock: Callable[[], int] = ...
) -> events_pb2.Quarantined: ...
@overload
def quarantined(
    stage: Literal["routing"],
    reason: str,
    detail: str,
    subject: events_pb2.InstanceIngested,
    clock: Callable[[], int] = ...,
) -> events_pb2.Quarantined: ...
@overload
def quarantined(
    stage: Literal["deid"], reason: str, detail: str, subject: events_pb2.InstanceRouted, clock: Callable[[], int] = ...
) -> events_pb2.Quarantined: ...
@overload
def quarantined(
    stage: Literal["delivery"],
    reason: str,
    detail: str,
    subject: events_pb2.InstancePrepared,
    clock: Callable[[], int] = ...,
) -> events_pb2.Quarantined: ...
def quarantined(
    stage: Stage, reason: str, detail: str, subject: Subject, clock: Callable[[], int] = now_ms
) -> events_pb2.Quarantined:
    """The event announcing that `stage` quarantined `subject` (what it read) for `reason`. `clock`
    times the events of the later stages; ingest's time is part of what it knows of the input."""
    if not isinstance(subject, _SUBJECTS[stage]):
        # Another stage's subject would get that stage's id: two events, one id, one dropped.
        raise TypeError(f"the {stage} stage quarantines {_SUBJECTS[stage].__name__}, not {type(subject).__name__}")
    match subject:
        case Unaccepted():
            return events_pb2.Quarantined(
                meta=_received_meta(stage, reason, subject),
                stage=stage,
                reason=reason,
                detail=detail,
                source_org=subject.source_org,
                blob=events_pb2.BlobRef(sha256=subject.sha256, size=subject.size) if subject.stored else None,
            )
        case events_pb2.InstanceIngested():
            return events_pb2.Quarantined(
                # By reason (for no-route the id it always had): two reasons must not share one id.
                meta=derived_meta(reason, subject.meta, clock=clock),
                stage=stage,
                reason=reason,
                detail=detail,
                source_org=subject.source_org,
                instance=subject.instance,
                blob=subject.blob,
            )
        case _:
            # Delivery names the instance as it was sent (not its de-identified copy) and the blob
            # prepared for the partner; deid has only the instance and blob it read.
            sent = subject.instance if isinstance(subject, events_pb2.InstanceRouted) else subject.source_instance
            return events_pb2.Quarantined(
                meta=derived_meta("quarantine", subject.meta, clock=clock),
                stage=stage,
                reason=reason,
                detail=detail,
                source_org=subject.source_org,
                instance=sent,
                blob=subject.blob,
                partner_id=subject.partner_id,
                route_id=subject.route_id,
            )


def _received_meta(stage: Stage, reason: str, subject: Unaccepted) -> events_pb2.EventMeta:
    # Unread inputs have no content hash; size and time tell one such rejection from another.
    identity = subject.sha256 or f"unread/{subject.size}/{subject.received_at_ms}"
    return events_pb2.EventMeta(
        event_id=event_id("quarantine", stage, subject.source_org, subject.channel, identity, reason),
        occurred_at_ms=subject.received_at_ms,
        ingested_at_ms=subject.received_at_ms,
    )
