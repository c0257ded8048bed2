"""Counters the analysts' aggregates are read from, as pure functions (services/audit/keyed.py stores them).

A batch of records becomes *deltas*: `{counter document id: {field path: increment}}`. Counter documents
are small and keyed by what is asked (kind, UTC day and, for organisations and partners, a shard of the
key space), so a month of one organisation's daily figures is 30 `_id` reads:

- `v:org:<day>:<shard>`, `v:partner:<day>:<shard>`, `v:modality:<day>`: per key `i` instances,
  `s` studies, `b` bytes; a partner's also `d` delivered and `f` failed outcomes. An organisation's
  and a modality's figures count what was ingested; a partner's what was prepared for it (its feed),
  plus its delivery outcomes.
- `t:<day>:<shard>`: per partner a histogram of turnaround (ingest accepted → stored in the partner's
  PACS, from receipts with status stored), log-spaced bins, mergeable by adding counts.
- `x:<day>`: the summary's counts and quarantines / dead letters by stage and reason; `xs:org:<org>:<day>`
  and `xs:partner:<partner>:<day>` the same of the records a scoped key sees (`scope_keys`).
- `vm:<org|partner>:<YYYY-MM>:<key>`: one key's daily figures of one month (`<dd>.i`, `.s`, `.b`, and a
  partner's `.d`, `.f`), the same counts as the `v:` documents, so a month of one organisation or
  partner is one `_id` read, not 30 (`month_volumes`).

Field names cannot hold '.' or start with '$' in MongoDB, so keys are percent-encoded (`enc`).
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from services.audit.records import AuditRecord, EventType

SHARDS = 4
BINS_PER_DECADE = 20  # neighbouring bins differ by 12%: a percentile is within ±6% of the true value
Deltas = dict[str, dict[str, int]]
Getter = Callable[[str], dict[str, Any] | None]
DIMENSIONS = ("org", "partner", "modality")


# Pure functions of a few distinct keys (organisations, partners, modalities, days), asked several times
# for every record counted: remembered rather than recomputed (a SHA-1 per shard, a strftime per day).
@functools.lru_cache(maxsize=4096)
def enc(key: str) -> str:
    return key.replace("%", "%25").replace(".", "%2E").replace("$", "%24") or "%00"


def dec(key: str) -> str:
    return "" if key == "%00" else key.replace("%2E", ".").replace("%24", "$").replace("%25", "%")


@functools.lru_cache(maxsize=4096)
def shard(key: str) -> int:
    return int(hashlib.sha1(key.encode()).hexdigest()[:4], 16) % SHARDS


def day_of(moment: datetime) -> str:
    return _day_name(moment.astimezone(UTC).date())


@functools.lru_cache(maxsize=1024)
def _day_name(day: date) -> str:
    return day.strftime("%Y-%m-%d")


def days_between(first: date, last: date) -> Iterator[str]:
    """Every day from `first` to `last` inclusive, as counter documents name them."""
    day = first
    while day <= last:
        yield day.isoformat()
        if day == date.max:  # the last day there is: one more is an OverflowError (a 500 for 9999-12-31)
            return
        day += timedelta(days=1)


def volume_doc(dimension: str, day: str, key: str) -> str:
    return f"v:{dimension}:{day}" if dimension == "modality" else f"v:{dimension}:{day}:{shard(key)}"


def volume_docs(dimension: str, day: str) -> list[str]:
    return [f"v:{dimension}:{day}"] if dimension == "modality" else [f"v:{dimension}:{day}:{s}" for s in range(SHARDS)]


def volume_ids(dimension: str, days: Iterable[str], key: str | None) -> list[str]:
    return [
        i for d in days for i in ([volume_doc(dimension, d, key)] if key is not None else volume_docs(dimension, d))
    ]


MONTHLY = ("org", "partner")  # dimensions whose keys also get a document per month


def month_doc(dimension: str, month: str, key: str) -> str:
    return f"vm:{dimension}:{month}:{key}"


def month_ids(dimension: str, days: Iterable[str], key: str) -> list[str]:
    return [month_doc(dimension, m, key) for m in dict.fromkeys(d[:7] for d in days)]


def _add_volume(out: Deltas, dimension: str, day: str, key: str, letter: str, n: int = 1) -> None:
    """One figure of a key's day: in the day's document and, for MONTHLY dimensions, the key's month's."""
    _add(out, volume_doc(dimension, day, key), f"{enc(key)}.{letter}", n)
    if dimension in MONTHLY:
        _add(out, month_doc(dimension, day[:7], key), f"{day[8:]}.{letter}", n)


def turnaround_ids(days: Iterable[str], partner: str | None) -> list[str]:
    return [i for d in days for i in ([turnaround_doc(d, partner)] if partner is not None else turnaround_docs(d))]


def turnaround_docs(day: str) -> list[str]:
    return [f"t:{day}:{s}" for s in range(SHARDS)]


def turnaround_doc(day: str, partner: str) -> str:
    return f"t:{day}:{shard(partner)}"


def turnaround_bin(ms: int) -> int:
    return 0 if ms < 1 else math.floor(BINS_PER_DECADE * math.log10(ms)) + 1


def bin_value(b: int) -> float:
    """A bin's representative value in ms (geometric middle of its bounds; bin 0 holds 0 ms)."""
    return 0.0 if b == 0 else 10 ** ((b - 0.5) / BINS_PER_DECADE)


def percentile(histogram: dict[int, int], pct: float) -> float | None:
    total = sum(histogram.values())
    if total == 0:
        return None
    rank, seen = math.ceil(total * pct / 100), 0
    for b in sorted(histogram):
        seen += histogram[b]
        if seen >= rank:
            return round(bin_value(b), 1)
    return round(bin_value(max(histogram)), 1)


def study_marks(record: AuditRecord) -> list[str]:
    """Marks whose first appearance adds one study to a counter (`studies` per key and day)."""
    study = record["study_uid"]
    if not study:
        return []
    day = day_of(record["occurred_at"])
    if record["event_type"] == EventType.INGESTED:
        return [
            f"st:org:{record['source_org'] or ''}:{day}:{study}",
            f"st:modality:{record['modality'] or ''}:{day}:{study}",
        ]
    if record["event_type"] == EventType.PREPARED:
        return [f"st:partner:{record['partner_id'] or ''}:{day}:{study}"]
    return []


def _add(deltas: Deltas, doc: str, path: str, n: int = 1) -> None:
    fields = deltas.setdefault(doc, {})
    fields[path] = fields.get(path, 0) + n


def scope_keys(record: AuditRecord) -> list[str]:
    """The scoped keys (services/audit/scopes.py) that see the record: its organisation, and the partner
    it went to or the one its sender asked for."""
    keys = [f"org:{record['source_org']}"] if record["source_org"] else []
    return keys + [f"partner:{p}" for p in dict.fromkeys((record["partner_id"], record["requested_partner_id"])) if p]


def summary_doc(day: str, scope: str | None = None) -> str:
    """`x:<day>`, the day's summary counts; `xs:<scope>:<day>` the same counts of the records one scoped
    key sees."""
    return f"x:{day}" if scope is None else f"xs:{scope}:{day}"


def deltas_for(records: Iterable[AuditRecord], new_studies: Iterable[str]) -> Deltas:
    """What `records` (each counted once: the caller passes only records not counted before) add to
    the counters; `new_studies` are the study marks (study_marks) seen for the first time."""
    out: Deltas = {}
    for r in records:
        day, kind = day_of(r["occurred_at"]), r["event_type"]
        summaries = [summary_doc(day, scope) for scope in (None, *scope_keys(r))]
        for doc in summaries:
            _add(out, doc, f"t.{enc(kind)}")
        size = r["size_bytes"] or 0
        if kind == EventType.INGESTED:
            org, modality = r["source_org"] or "", r["modality"] or ""
            for dimension, key in (("org", org), ("modality", modality)):
                _add_volume(out, dimension, day, key, "i")
                _add_volume(out, dimension, day, key, "b", size)
        elif kind == EventType.PREPARED:
            partner = r["partner_id"] or ""
            _add_volume(out, "partner", day, partner, "i")
            _add_volume(out, "partner", day, partner, "b", size)
        elif kind == EventType.OUTCOME and r["status"] in ("delivered", "failed"):
            partner = r["partner_id"] or ""
            letter = "d" if r["status"] == "delivered" else "f"
            _add_volume(out, "partner", day, partner, letter)
            for doc in summaries:
                _add(out, doc, f"{letter}p.{enc(partner)}")
        elif kind == EventType.RECEIPT and r["status"] == "stored" and r["ingested_at"] is not None:
            partner = r["partner_id"] or ""
            ms = int((r["occurred_at"] - r["ingested_at"]).total_seconds() * 1000)
            _add(out, turnaround_doc(day, partner), f"{enc(partner)}.{turnaround_bin(ms)}")
        elif kind == EventType.QUARANTINED:
            for doc in summaries:
                _add(out, doc, f"q.{enc(r['stage'] or '')}~{enc(r['reason'] or '')}")
                _add(out, doc, f"qr.{enc(r['reason'] or '')}")
        elif kind == EventType.DEAD_LETTER:
            for doc in summaries:
                _add(out, doc, f"dl.{enc(r['stage'] or '')}~{enc(r['reason'] or '')}")
                _add(out, doc, f"ds.{enc(r['stage'] or '')}")
    for mark in new_studies:
        _, dimension, key, day, _study = mark.split(":", 4)
        _add_volume(out, dimension, day, key, "s")
    return out


def apply(docs: dict[str, dict[str, Any]], deltas: Deltas) -> None:
    """$inc in memory (the in-memory store and tests): nested the way MongoDB nests dotted paths."""
    for doc_id, fields in deltas.items():
        doc = docs.setdefault(doc_id, {"_id": doc_id})
        for path, n in fields.items():
            head, _, tail = path.partition(".")
            inner = doc.setdefault(head, {})
            inner[tail] = inner.get(tail, 0) + n


@dataclass(frozen=True)
class VolumeRow:
    day: str
    key: str
    instances: int = 0
    studies: int = 0
    bytes: int = 0
    delivered: int = 0
    failed: int = 0


def volumes(get: Getter, dimension: str, days: Iterable[str], key: str | None = None) -> list[VolumeRow]:
    """Per day and key; with `key` only that key's documents are read (one per day)."""
    rows: list[VolumeRow] = []
    for day in days:
        ids = [volume_doc(dimension, day, key)] if key is not None else volume_docs(dimension, day)
        for doc_id in ids:
            doc = get(doc_id) or {}
            for name, c in sorted(doc.items()):
                if name.startswith("_") or name == "g" or not isinstance(c, dict):
                    continue
                if key is not None and dec(name) != key:
                    continue
                rows.append(
                    VolumeRow(day, dec(name), c.get("i", 0), c.get("s", 0), c.get("b", 0), c.get("d", 0), c.get("f", 0))
                )
    return sorted(rows, key=lambda r: (r.day, r.key))


def month_volumes(get: Getter, dimension: str, days: Iterable[str], key: str) -> list[VolumeRow]:
    """One key's rows from its month documents (`month_ids`): the same rows `volumes` gives for it."""
    rows: list[VolumeRow] = []
    for day in days:
        c = (get(month_doc(dimension, day[:7], key)) or {}).get(day[8:])
        if isinstance(c, dict):
            rows.append(VolumeRow(day, key, c.get("i", 0), c.get("s", 0), c.get("b", 0), c.get("d", 0), c.get("f", 0)))
    return rows


@dataclass
class Turnaround:
    partner: str
    histogram: dict[int, int] = field(default_factory=dict)
    by_day: dict[str, dict[int, int]] = field(default_factory=dict)


def turnaround(get: Getter, days: Iterable[str], partner: str | None = None) -> list[Turnaround]:
    found: dict[str, Turnaround] = {}
    for day in days:
        ids = [turnaround_doc(day, partner)] if partner is not None else turnaround_docs(day)
        for doc_id in ids:
            for name, bins in (get(doc_id) or {}).items():
                if name.startswith("_") or name == "g" or not isinstance(bins, dict):
                    continue
                if partner is not None and dec(name) != partner:
                    continue
                t = found.setdefault(dec(name), Turnaround(dec(name)))
                per_day = t.by_day.setdefault(day, {})
                for b, n in bins.items():
                    t.histogram[int(b)] = t.histogram.get(int(b), 0) + n
                    per_day[int(b)] = per_day.get(int(b), 0) + n
    return [found[p] for p in sorted(found)]


@dataclass(frozen=True)
class StageReasonCount:
    day: str
    kind: str  # "quarantined" or "dead_letter"
    stage: str
    reason: str
    count: int


def stage_reasons(get: Getter, days: Iterable[str], scope: str | None = None) -> list[StageReasonCount]:
    rows: list[StageReasonCount] = []
    for day in days:
        doc = get(summary_doc(day, scope)) or {}
        for prefix, kind in (("q", "quarantined"), ("dl", "dead_letter")):
            for name, n in sorted((doc.get(prefix) or {}).items()):
                stage, _, reason = name.partition("~")
                rows.append(StageReasonCount(day, kind, dec(stage), dec(reason), n))
    return rows


def summary_counts(get: Getter, days: Iterable[str], scope: str | None = None) -> dict[str, dict[str, int]]:
    """The summary's maps (events_by_type, delivered/failed by partner, quarantined by reason, dead
    letters by stage) summed over whole days (of what the scoped key `scope` sees, when given)."""
    out: dict[str, dict[str, int]] = {"t": {}, "dp": {}, "fp": {}, "qr": {}, "ds": {}}
    for day in days:
        doc = get(summary_doc(day, scope)) or {}
        for prefix, counts in out.items():
            for name, n in (doc.get(prefix) or {}).items():
                counts[dec(name)] = counts.get(dec(name), 0) + n
    return out
