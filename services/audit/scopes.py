"""What an analyst's key may see (issue 8 item 5): everything, one sending organisation, or one partner.

A scope is written `all`, `org:<id>` or `partner:<id>`. A scoped key sees only the records about its
organisation (`source_org`) or partner (`partner_id`, or the partner the sender asked for). The rules
here are pure; the API applies them (services/audit/api.py) and answers a request naming someone
else's objects with 403, never with an empty answer that would hide that the object exists elsewhere.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, cast

from services.audit.records import AuditRecord, delivered_sop
from services.common.messages import shown

ScopeKind = Literal["all", "org", "partner"]
_ID = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}\Z")


_RECEIVED_UIDS = ("study_uid", "series_uid", "sop_uid")


def _passed_through(record: AuditRecord) -> bool:
    """A route, preparation or outcome that says no profile was applied, and names no other UIDs the
    instance was delivered under: the partner received these UIDs. The UIDs decide, whatever the record
    says of a profile: delivery's outcome for a delivery that expired unread names none, and its
    original's UIDs beside the copy's showed a research partner the identifiable original."""
    return (
        record["event_type"] in ("routed", "prepared", "outcome")
        and not record.get("profile")
        and not record.get("deidentified")
        and all(
            record.get(received) is None or record.get(delivered) in (None, record.get(received))
            for received, delivered in _DELIVERED_AS
        )
    )


# Each UID received beside the one it was delivered under (an expiry names no received series).
_DELIVERED_AS = tuple((received, f"delivered_{received}") for received in _RECEIVED_UIDS)


_IMX_DECIDED = frozenset({"routed", "prepared", "outcome"})


def _delivered_as(record: AuditRecord) -> tuple[str | None, str | None, str | None]:
    """(partner, study, instance) as the partner received it."""
    return record["partner_id"], record["delivered_study_uid"] or record["study_uid"], delivered_sop(record)


def _receipts_for(admitted: list[AuditRecord], records: list[AuditRecord]) -> list[AuditRecord]:
    """The partners' receipts for what an organisation's records say was delivered: a receipt names no
    sending organisation, and the sender's trail stopped at "delivered", never "stored"."""
    sent = {_delivered_as(r) for r in admitted if r["event_type"] == "outcome"}
    studies = {(partner, study) for partner, study, _sop in sent}
    return [
        r
        for r in records
        if r["event_type"] == "receipt"
        and (_delivered_as(r) in sent or (r["delivered_sop_uid"] is None and _delivered_as(r)[:2] in studies))
    ]


class ScopeDenied(Exception):
    """The request names an organisation or partner, or asks an aggregate, outside the key's scope."""


@dataclass(frozen=True)
class Scope:
    kind: ScopeKind = "all"
    value: str = ""

    @classmethod
    def parse(cls, text: str) -> Scope:
        """`all` (or empty: keys issued before scopes existed), `org:<id>`, `partner:<id>`."""
        text = text.strip()
        if text in ("", "all"):
            return cls()
        kind, sep, value = text.partition(":")
        if not sep or kind not in ("org", "partner") or not _ID.match(value):
            raise ValueError(f"scope must be all, org:<id> or partner:<id> (got {shown(text)})")
        return cls("org" if kind == "org" else "partner", value)

    def __str__(self) -> str:
        return "all" if self.kind == "all" else f"{self.kind}:{self.value}"

    @property
    def everything(self) -> bool:
        return self.kind == "all"

    def admits(self, record: AuditRecord) -> bool:
        if self.kind == "org":
            return record["source_org"] == self.value
        if self.kind == "partner":
            return self.value in (record["partner_id"], record["requested_partner_id"])
        return True

    def readable(self, record: AuditRecord) -> AuditRecord:
        """`record` as this key may read it. A partner's key does not see the UIDs an instance was received
        under unless the record says the partner got it as received (a care transfer): for a
        de-identified copy they link what the partner holds to the identifiable original, which is what
        de-identification took away. Ingest's and quarantine records do not say, and keep them hidden."""
        if self.kind != "partner" or record.get("study_uid") is None or _passed_through(record):
            return record
        hidden = dict(record)  # not a StoredRecord: its stored JSON would carry the UIDs
        for name in _RECEIVED_UIDS:
            hidden[name] = None
        return cast(AuditRecord, hidden)

    def trail(self, study_uid: str, records: Iterable[AuditRecord]) -> list[AuditRecord]:
        """The records of a study's trail this key may read; none when a partner's key names the study by
        a UID it was not given (the original's, for a de-identified copy): answered, the trail confirmed
        the guess and showed the copy's UID, the link from what the partner holds to the identifiable
        original, and a 404 for a wrong guess made it an oracle."""
        records = list(records)
        admitted = [r for r in records if self.admits(r)]
        if self.kind == "org":
            return admitted + _receipts_for(admitted, records)
        if self.kind != "partner":
            return admitted
        # From the records of what imx did with the study: a receipt's UIDs are the partner's own words,
        # and a retrieval's are the path it asked for (found or not): one naming a guessed original
        # opened its trail.
        written = [self.readable(r) for r in admitted if r["event_type"] in _IMX_DECIDED]
        given = {uid for r in written for uid in (r["study_uid"], r["delivered_study_uid"])}
        return admitted if study_uid in given else []

    def narrow(self, kind: Literal["org", "partner"], asked: str | None) -> str | None:
        """The filter on `kind` a request may use: forced to the scope's own id for a key of that kind,
        refused when it names another one."""
        if self.kind != kind:
            return asked
        if asked is not None and asked != self.value:
            raise ScopeDenied(f"this key is limited to {self}")
        return self.value

    def aggregate_key(self, dimension: str, asked: str | None) -> str | None:
        """The key of a per-`dimension` aggregate this scope may read. Counters are kept per organisation,
        per partner and per modality separately, so an organisation's key reads only `org` figures and a
        partner's only `partner` figures."""
        if self.everything:
            return asked
        if dimension != self.kind or self.kind == "all":
            raise ScopeDenied(f"figures per {dimension} are not kept per {self.kind}; this key is limited to {self}")
        return self.narrow(self.kind, asked)

    def require_everything(self, what: str) -> None:
        if not self.everything:
            raise ScopeDenied(f"{what} are not kept per organisation or partner; this key is limited to {self}")
