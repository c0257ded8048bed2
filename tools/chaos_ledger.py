"""The ledger of `make chaos`: what was sent and acknowledged, what arrived in the partner's PACS and
what was quarantined, and the reconciliation of the three (pure; no I/O).

Instances of the ledgered run carry a marker in their last pixel bytes (a run token and their index),
which de-identification copies as it is; so an object in the partner's folder is matched to what was
sent whatever UIDs the profile gave it. Malformed inputs go by a pass-through route and are matched by
their SOP Instance UID.

- lost: acknowledged to the sender (C-STORE 0000 / STOW stored), then neither in the partner's folder
  nor quarantined.
- duplicated: objects beyond the first stored for one sent instance under another SOP Instance UID
  or with other content. The same object stored again (an at-least-once redelivery of the same event)
  is counted apart as `redelivered`; a PACS keeps one copy of it.
- unaccounted: malformed inputs that ended neither delivered nor quarantined with a reason.
"""

from __future__ import annotations

import struct
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

MARK_LEN = 12  # 8-byte run token + 4-byte index


def mark(data: bytes, token: bytes, index: int) -> bytes:
    """`data` (Pixel Data last) with its last 12 bytes replaced by the run token and `index`."""
    if len(token) != 8:
        raise ValueError("the run token is 8 bytes")
    return data[:-MARK_LEN] + token + struct.pack(">I", index)


def read_mark(data: bytes, token: bytes) -> int | None:
    """The index marked in an object stored by the partner, or None when it carries no mark of this run."""
    at = data.rfind(token)
    if at < 0 or at + MARK_LEN > len(data):
        return None
    return int(struct.unpack(">I", data[at + 8 : at + MARK_LEN])[0])


@dataclass(frozen=True)
class Arrival:
    """One object the partner's PACS stored."""

    sop_uid: str
    sha256: str
    index: int | None  # the ledgered run's index, when marked
    at: float  # seconds (monotonic clock of the run)


@dataclass
class Ledger:
    acknowledged: dict[int, float] = field(default_factory=dict)  # ledger index -> when the sender heard success
    arrivals: list[Arrival] = field(default_factory=list)
    quarantined: dict[str, str] = field(default_factory=dict)  # SOP Instance UID -> reason
    quarantined_indexes: set[int] = field(default_factory=set)
    source_uids: dict[int, str] = field(default_factory=dict)  # ledger index -> SOP Instance UID sent
    study_uids: set[str] = field(default_factory=set)  # the Study Instance UIDs sent

    def first_arrival(self) -> dict[int, float]:
        first: dict[int, float] = {}
        for arrival in self.arrivals:
            if arrival.index is not None and (arrival.index not in first or arrival.at < first[arrival.index]):
                first[arrival.index] = arrival.at
        return first

    def note_quarantine(self, sop_uid: str, reason: str) -> None:
        self.quarantined[sop_uid] = reason
        for index, uid in self.source_uids.items():
            if uid == sop_uid:
                self.quarantined_indexes.add(index)


@dataclass(frozen=True)
class Reconciled:
    lost: int
    duplicated: int
    redelivered: int
    quarantined: int
    arrived: int
    acknowledged: int
    foreign: int  # objects with no mark of this run and no UID of its inputs


def reconcile(ledger: Ledger, known_uids: set[str] | None = None) -> Reconciled:
    """`known_uids`: SOP Instance UIDs of other inputs of the run (the malformed ones), not foreign."""
    objects: dict[int, set[tuple[str, str]]] = defaultdict(set)
    copies: dict[int, int] = defaultdict(int)
    foreign = 0
    for arrival in ledger.arrivals:
        if arrival.index is None:
            foreign += arrival.sop_uid not in (known_uids or set())
            continue
        objects[arrival.index].add((arrival.sop_uid, arrival.sha256))
        copies[arrival.index] += 1
    owed = set(ledger.acknowledged)
    lost = len(owed - set(objects) - ledger.quarantined_indexes)
    duplicated = sum(len(found) - 1 for index, found in objects.items() if len(found) > 1)
    redelivered = sum(copies[index] - len(found) for index, found in objects.items())
    return Reconciled(
        lost=lost,
        duplicated=duplicated,
        redelivered=redelivered,
        quarantined=len(owed & ledger.quarantined_indexes),
        arrived=len(owed & set(objects)),
        acknowledged=len(owed),
        foreign=foreign,
    )


def caught_up(ledger: Ledger, before: float) -> bool:
    """Whether everything acknowledged before `before` has arrived or been quarantined."""
    first = ledger.first_arrival()
    return all(
        index in first or index in ledger.quarantined_indexes
        for index, at in ledger.acknowledged.items()
        if at < before
    )


# --- malformed inputs -----------------------------------------------------------------------------


@dataclass(frozen=True)
class DoorAnswer:
    """What the door told the sender of one malformed input."""

    index: int
    kind: str
    channel: str  # "c-store" | "stow-rs"
    sop_uid: str
    outcome: str  # "accepted" | "rejected" (a failure with a reason) | "refused" (no context) | "error"
    reason: str  # the status or FailureReason, "" when none came
    seconds: float
    http_status: int = 0


@dataclass(frozen=True)
class FuzzFigures:
    inputs: int
    accepted: int
    rejected: int
    refused: int
    errors: int
    fivexx: int
    hangs: int
    unaccounted: int
    slowest_s: float
    by_kind: dict[str, dict[str, int]]
    problems: list[DoorAnswer] = field(default_factory=list)  # the hangs and the unaccounted, to look into


def fuzz_figures(
    answers: Iterable[DoorAnswer],
    delivered_uids: set[str],
    quarantined_uids: Mapping[str, str],
    door_quarantines: int,
    hang_s: float = 5.0,
) -> FuzzFigures:
    """Door answers of the malformed inputs reconciled with what was delivered and quarantined.

    An input is accounted for when it was accepted and then delivered or quarantined (by its SOP
    Instance UID), or rejected at the door with a reason (C-STORE failure status with its Error
    Comment, STOW-RS FailureReason) and matched by a quarantine event of ingest for the fuzzing sender, or refused
    at association (no presentation context for it: the sender is told and nothing entered). The
    quarantine events of the fuzzing sender are matched by count, since an input rejected for having
    no readable header has no UID to match by."""
    answers = list(answers)
    by_kind: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    accepted = rejected = refused = errors = fivexx = hangs = 0
    unaccounted = 0
    problems = []
    for answer in answers:
        by_kind[answer.kind][answer.outcome] += 1
        if answer.http_status >= 500:
            fivexx += 1
        missing = False
        if answer.outcome == "accepted":
            accepted += 1
            missing = answer.sop_uid not in delivered_uids and answer.sop_uid not in quarantined_uids
        elif answer.outcome == "rejected":
            rejected += 1
        elif answer.outcome == "refused":
            refused += 1
        else:
            errors += 1
            missing = True
        unaccounted += missing
        hangs += answer.seconds > hang_s
        if missing or answer.seconds > hang_s:
            problems.append(answer)
    unaccounted += max(0, rejected - door_quarantines)
    return FuzzFigures(
        inputs=len(answers),
        accepted=accepted,
        rejected=rejected,
        refused=refused,
        errors=errors,
        fivexx=fivexx,
        hangs=hangs,
        unaccounted=unaccounted,
        slowest_s=round(max((a.seconds for a in answers), default=0.0), 2),
        by_kind={kind: dict(outcomes) for kind, outcomes in sorted(by_kind.items())},
        problems=problems,
    )
