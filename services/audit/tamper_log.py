"""The audit log's tamper evidence: every audit record appended once to an RFC 9162 Merkle log kept in
MongoDB, with signed tree heads (services/audit/merkle.py, signing.py).

Every document is read and written by its exact `_id` (the one query FerretDB 1.x answers fast at any
size), one collection (default `audit_log`):

- `leaves:<c>`: leaves 256c .. 256c+255 in order, each with its index (`i`), the record's `_id`
  (`id`), its digest (`d`), field set (`f`), append time (`t`, epoch ms) and leaf hash (`h`); `n` counts
  them. One document per 256 leaves, filled by a batch's insert or by extending it (compare-and-set on
  `n`): a document per leaf made the log cost three inserts per record. The entries are one binary
  field (`b`, the entries as BSON documents one after another: `chunk_entries`), not an array of
  subdocuments (`e`, still read): FerretDB converts every field it stores and rewrites the whole
  document on an update, so 6 fields a leaf were ~45 µs of FerretDB and PostgreSQL CPU per record.
- `leafof:<record _id>`: the record has been claimed for the log (`b`: the tree size when it was
  claimed), so a record delivered twice is appended once; a claim whose attempt never moved the head
  is taken over by the next attempt (`_already_logged`). The audit consumer's records need none: the
  record store keeps the same size in each record it inserts (`StoreClaims`, field `_l`); the access
  log's entries, control changes and records stored by older versions still have them.
- `node:<level>:<index>`: the hash of each complete subtree of 256 leaves or more (2**level leaves from
  index * 2**level); smaller ones are hashed from their `leaves` document. A root or a proof costs
  O(log n) lookups, never a scan.
- `head`: the tree size and its frontier (the roots of its perfect subtrees). Moving it (compare-and-set
  on the size) commits a batch: leaves and nodes at or past the head are an unfinished attempt's, and
  the next attempt (the bus's replay of the uncommitted batch, in whatever composition) overwrites them.
  A batch costs three writes whatever its size (four with `leafof:` claims): the partly filled `leaves`
  document extended (read, then compare-and-set on `n`), an insert of new `leaves` documents and nodes,
  the head. (`pending:<size>`, the batch written out before its
  leaves, is gone: its insert and delete were half the log's write time on FerretDB; one left by an
  older version is still finished at start.)
- `sth:<size>` and `sth:latest`: signed tree heads, every `sth_every` leaves or `sth_interval_s`
  seconds; each names the previous one (`prev`), so verification walks them by `_id`.
- `fields:<id>`: the field names a record digest covers.
- `lease`: the single writer (below). `checkpoint:<size>`/`checkpoint:latest`: retention (retention.py).

Single writer. Leaf indexes are handed out by one process: the audit service runs one replica (the
chart pins `replicas: 1`). A second writer is refused, not merged: the `lease` document is taken and
renewed with a compare-and-set on (`_id`, owner), expires `lease_s` after its last renewal (a crashed
writer's successor waits that long), and is released on a clean stop; as a backstop the head is
compare-and-set by `_id` and leaves past the head are only rewritten while the stored head is still this
writer's start, so two writers cannot both commit leaf i. Either refusal raises ConcurrentWriterError, a
transient failure for the bus: the batch is retried, never committed unlogged.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Container, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

import bson
from pymongo.collection import Collection
from pymongo.errors import BulkWriteError, DuplicateKeyError

from services.audit import merkle
from services.audit.log_entries import digest_of_own_fields, field_set_id, leaf_entry
from services.audit.records import AuditRecord
from services.audit.signing import Signer, tree_head_message
from services.common.failures import database_away_is_transient
from services.common.messages import TransientError

log = logging.getLogger(__name__)

DUPLICATE_KEY = 11000
HEAD, LEASE, LATEST_STH = "head", "lease", "sth:latest"


CHUNK_LEVEL = 8
CHUNK = 1 << CHUNK_LEVEL  # leaves per `leaves:<c>` document


def chunk_id(chunk: int) -> str:
    return f"leaves:{chunk}"


def chunk_entries(doc: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """The leaf entries a `leaves` document holds, in stored order: packed (`b`) or, as written before,
    an array (`e`)."""
    if doc is None:
        return []
    if "b" in doc:
        return bson.decode_all(bytes(doc["b"]))
    return list(doc.get("e", []))


def packed(entries: Sequence[Mapping[str, Any]]) -> bytes:
    """Entries as `b` holds them: BSON documents one after another, so a batch extends a partly filled
    document by appending bytes to what is stored, whatever was stored."""
    return b"".join(bson.encode(e) for e in entries)


def stored_bytes(doc: Mapping[str, Any]) -> bytes:
    """A `leaves` document's entries as packed bytes, exactly as stored (an `e` array packed as it is)."""
    return bytes(doc["b"]) if "b" in doc else packed(doc.get("e", []))


def claim_id(record_id: str) -> str:
    return f"leafof:{record_id}"


def node_id(level: int, index: int) -> str:
    return f"node:{level}:{index}"


def sth_id(size: int) -> str:
    return f"sth:{size}"


@dataclass(frozen=True)
class StoreClaims:
    """The record store's insert as the log's claim, instead of a `leafof:` document per record (half the
    documents a batch wrote). Before storing a batch the writer reads `TamperLog.next_index()` and the
    store keeps it in each record it inserts (`LOG_SINCE`): `new` are the records inserted by this
    attempt, so none of them can be in the log yet; `since(record_id)` reads a stored record's value
    (None: stored by a version that claimed with `leafof:` documents, which are then used). A record
    stored with `since` = s, if logged, is at a leaf index ≥ s, the same rule as a claim's `b`."""

    new: Container[str]
    since: Callable[[str], int | None]


LOG_SINCE = "_l"  # the field of a stored record holding that size


class ConcurrentWriterError(TransientError):
    """Another process holds the log's lease or wrote where this one meant to."""


@contextmanager
def unavailable_is_transient() -> Iterator[None]:
    with database_away_is_transient("audit log"):
        yield


@dataclass(frozen=True)
class TreeHead:
    size: int
    timestamp_ms: int
    root: bytes
    signature: bytes
    public_key: bytes
    prev: int | None = None  # the size of the tree head signed before this one

    def message(self) -> bytes:
        return tree_head_message(self.size, self.timestamp_ms, self.root)

    def to_doc(self) -> dict[str, Any]:
        return {
            "size": self.size,
            "ts": self.timestamp_ms,
            "root": self.root,
            "sig": self.signature,
            "key": self.public_key,
            "prev": self.prev,
        }

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> TreeHead:
        return cls(
            int(doc["size"]), int(doc["ts"]), bytes(doc["root"]), bytes(doc["sig"]), bytes(doc["key"]), doc.get("prev")
        )


def _only_duplicates(exc: BulkWriteError) -> bool:
    details = exc.details or {}
    return not details.get("writeConcernErrors") and all(
        e.get("code") == DUPLICATE_KEY for e in details.get("writeErrors", [])
    )


def _insert_many(collection: Collection[dict[str, Any]], docs: list[dict[str, Any]]) -> set[int]:
    """Insert, unordered; returns the positions that already existed (duplicate `_id`)."""
    if not docs:
        return set()
    try:
        collection.insert_many(docs, ordered=False)
    except BulkWriteError as exc:
        if not _only_duplicates(exc):
            raise
        return {int(e["index"]) for e in exc.details.get("writeErrors", [])}
    return set()


class StoredTree:
    """Reads the stored log by `_id`; serves range hashes to merkle's proof algorithms. No lease needed."""

    def __init__(self, collection: Collection[dict[str, Any]]) -> None:
        self.collection = collection
        self._purged: dict[tuple[int, int], bytes] = {}
        self._cached: tuple[int, list[dict[str, Any]]] | None = None

    def get(self, doc_id: str) -> dict[str, Any] | None:
        with unavailable_is_transient():
            return self.collection.find_one({"_id": doc_id})

    def size(self) -> int:
        head = self.get(HEAD)
        return int(head["size"]) if head else 0

    def chunk(self, chunk: int) -> list[dict[str, Any]]:
        """The entries of `leaves:<chunk>` as stored (in stored order; empty when it is gone)."""
        if self._cached is not None and self._cached[0] == chunk:
            return self._cached[1]
        entries = chunk_entries(self.get(chunk_id(chunk)))
        self._cached = (chunk, entries)
        return entries

    def forget(self) -> None:
        """Drop the one `leaves` document kept between calls (read it again next time)."""
        self._cached = None

    def leaf(self, index: int) -> dict[str, Any] | None:
        for entry in self.chunk(index // CHUNK):
            if entry.get("i") == index:
                return entry
        return None

    def tree_head(self, size: int | None = None) -> TreeHead | None:
        doc = self.get(LATEST_STH if size is None else sth_id(size))
        return TreeHead.from_doc(doc) if doc else None

    def tree_heads(self) -> list[TreeHead]:
        """Every signed tree head, oldest first, following each one's `prev` back from the latest."""
        heads: list[TreeHead] = []
        head = self.tree_head()
        while head is not None:
            heads.append(head)
            head = self.tree_head(head.prev) if head.prev is not None else None
        heads.reverse()
        return heads

    def use_purged_frontier(self, purged_to: int, hashes: Sequence[bytes]) -> None:
        """The perfect subtrees of [0, purged_to) from a retention checkpoint: its leaves are gone."""
        self._purged = dict(zip(merkle.perfect_blocks(0, purged_to), hashes, strict=True))

    def block(self, level: int, index: int) -> bytes:
        if (level, index) in self._purged:
            return self._purged[(level, index)]
        if level >= CHUNK_LEVEL:
            doc = self.get(node_id(level, index))
            if doc is None:
                raise LookupError(f"the log has no node ({level}, {index})")
            return bytes(doc["h"])
        first = index << level
        self.forget()  # a partly filled document may have grown since
        leaves = [self.leaf(i) for i in range(first, first + (1 << level))]
        if any(leaf is None for leaf in leaves):
            raise LookupError(f"the log lacks leaves of {first}..{first + (1 << level) - 1}")
        return merkle.root_of([bytes(leaf["h"]) for leaf in leaves if leaf is not None])

    def range_hash(self, start: int, end: int) -> bytes:
        return merkle.range_hash_from_blocks(self.block)(start, end)


class TamperLog:
    """The writer. `open()` takes the lease and finishes a batch a crash left half-appended; `append()`
    adds records not yet in the log; `sign_if_due()` signs a tree head. Thread-safe (one lock)."""

    def __init__(
        self,
        collection: Collection[dict[str, Any]],
        signer: Signer,
        owner: str,
        *,
        sth_every: int = 10_000,
        sth_interval_s: float = 60.0,
        lease_s: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._docs = collection
        self._signer = signer
        self._owner = owner
        self._sth_every = sth_every
        self._sth_interval_ms = int(sth_interval_s * 1000)
        self._lease_ms = int(lease_s * 1000)
        self._clock = clock
        self._lock = threading.Lock()
        self._frontier = merkle.Frontier()
        self._latest: TreeHead | None = None
        self._field_sets: set[str] = set()
        self._opened = False
        self._renewed_ms = 0

    @property
    def size(self) -> int:
        return self._frontier.size

    @property
    def latest(self) -> TreeHead | None:
        return self._latest

    @property
    def signer(self) -> Signer:
        return self._signer

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    # ---- the lease ----
    def _take_lease(self) -> None:
        now = self._now_ms()
        held = self._docs.find_one({"_id": LEASE})
        if held is None:
            try:
                self._docs.insert_one({"_id": LEASE, "owner": self._owner, "expires": now + self._lease_ms})
            except DuplicateKeyError as exc:
                raise ConcurrentWriterError("another audit process took the log's lease first") from exc
            self._renewed_ms = now
            return
        if held["owner"] != self._owner and held["expires"] > now:
            raise ConcurrentWriterError(
                f"the audit log is held by another writer for {(held['expires'] - now) / 1000:.0f} s more "
                "(the audit service is single-writer: run one replica)"
            )
        taken = self._docs.update_one(
            {"_id": LEASE, "owner": held["owner"], "expires": held["expires"]},
            {"$set": {"owner": self._owner, "expires": now + self._lease_ms}},
        )
        if taken.matched_count != 1:
            raise ConcurrentWriterError("another audit process took the log's lease first")
        self._renewed_ms = now

    def _renew_lease(self) -> None:
        """Renewed once a third of the lease has passed, not per batch: a write less per batch, and the
        lease stays ours for two thirds of its length whatever happens in between."""
        now = self._now_ms()
        if now < self._renewed_ms + self._lease_ms // 3:
            return
        renewed = self._docs.update_one(
            {"_id": LEASE, "owner": self._owner}, {"$set": {"expires": now + self._lease_ms}}
        )
        if renewed.matched_count != 1:
            self._opened = False
            raise ConcurrentWriterError("the audit log's lease was taken by another writer")
        self._renewed_ms = now

    # ---- start-up ----
    def open(self) -> None:
        with self._lock, unavailable_is_transient():
            self._open()

    def _open(self) -> None:
        """Take the lease, read the head and finish an interrupted batch; also after any failed append,
        when what is stored may be ahead of what this process holds."""
        self._take_lease()
        with suppress(DuplicateKeyError):
            self._docs.insert_one({"_id": HEAD, "size": 0, "frontier": []})
        head = self._docs.find_one({"_id": HEAD}) or {}
        self._frontier = merkle.Frontier(int(head["size"]), [bytes(h) for h in head["frontier"]])
        latest = self._docs.find_one({"_id": LATEST_STH})
        self._latest = TreeHead.from_doc(latest) if latest else None
        self._recover()
        self._opened = True

    def _recover(self) -> None:
        """Finish a batch an older version left half-appended (`pending:<size>`); this version writes none."""
        start = self._frontier.size
        pending = self._docs.find_one({"_id": f"pending:{start}"})
        if pending is None:
            return
        entries = []
        for e in pending["entries"]:
            claim = self._docs.find_one({"_id": claim_id(e["id"])})
            if claim is not None and claim.get("b") == start:
                entries.append((str(e["id"]), bytes(e["d"]), str(e["f"]), int(e["t"])))
        self._write_leaves(entries)
        self._docs.delete_one({"_id": f"pending:{start}"})
        log.info(
            "audit log: finished a batch interrupted by a crash", extra={"instances": len(entries), "count": start}
        )

    # ---- appending ----
    def next_index(self) -> int:
        """The index the next leaf will get (opening the log first): a lower bound of where any record
        appended from now on will be, for `StoreClaims`."""
        with self._lock, unavailable_is_transient():
            if not self._opened:
                self._open()
            return self._frontier.size

    def append(self, records: Sequence[AuditRecord | Mapping[str, Any]], stored: StoreClaims | None = None) -> int:
        """Append the records not in the log yet, in the given order; returns how many were appended.
        With `stored`, the record store's insert is the claim (no `leafof:` document per record)."""
        with self._lock, unavailable_is_transient():
            if not self._opened:
                self._open()
            else:
                self._renew_lease()
            self._opened = False  # until this batch is fully appended: a failure re-reads the stored state
            appended = self._append(records, stored)
            self._opened = True
            return appended

    def _append(self, records: Sequence[AuditRecord | Mapping[str, Any]], stored: StoreClaims | None) -> int:
        """One claims insert (none with `stored`, unless a record was stored by an older version), at most
        one `$push`, one insert of the new `leaves` documents and nodes, and the head's compare-and-set,
        whatever the batch's size. The head is the commit: leaves, nodes and claims written by an attempt
        whose head never moved are taken over by the next one."""
        start = self._frontier.size
        appended_ms = self._now_ms()
        batch: dict[str, tuple[str, bytes, str, int]] = {}
        for record in records:
            record_id = str(record["_id"])
            if record_id not in batch:
                fields, digest = digest_of_own_fields(record)
                batch[record_id] = (record_id, digest, self._field_set(fields), appended_ms)
        if not batch:
            return 0
        entries = list(batch.values())
        since: dict[str, int] = {}
        to_claim = entries
        if stored is not None:
            to_claim = []
            for entry in entries:
                if entry[0] in stored.new:
                    continue  # stored just now, after this writer read the size: not in the log
                at = stored.since(entry[0])
                if at is None:
                    to_claim.append(entry)  # stored by a version that claimed with `leafof:` documents
                else:
                    since[entry[0]] = at
        taken = _insert_many(self._docs, [{"_id": claim_id(e[0]), "b": start} for e in to_claim])
        for i in sorted(taken):
            claim = self._docs.find_one({"_id": claim_id(to_claim[i][0])}) or {}
            since[to_claim[i][0]] = int(claim.get("b", start))
        logged = self._already_logged(since, start)
        new = [e for e in entries if e[0] not in logged]
        self._write_leaves(new)
        self._sign_if_due(appended_ms, force=False)
        return len(new)

    def _already_logged(self, since: Mapping[str, int], start: int) -> set[str]:
        """Of records claimed before (a replay), those in the log: `since` maps each to the tree size at its
        claim. A claim made at `b` = the current size belongs to an attempt whose head never moved (it
        failed half-way): not logged. One made at an earlier size is logged if the leaves from `b` on hold
        it: the attempt that moved the head from `b` may have had another composition than the one that
        claimed it (a crash, then a replay)."""
        logged: set[str] = set()
        chunks: dict[int, dict[str, int]] = {}  # chunk -> record id -> leaf index, below the head
        for record_id, at in since.items():
            if at >= start:
                continue
            for chunk in range(at // CHUNK, (start - 1) // CHUNK + 1):
                if chunk not in chunks:
                    entries = chunk_entries(self._docs.find_one({"_id": chunk_id(chunk)}))
                    chunks[chunk] = {str(e["id"]): int(e["i"]) for e in entries if int(e["i"]) < start}
                if chunks[chunk].get(record_id, -1) >= at:
                    logged.add(record_id)
                    break
        return logged

    def _field_set(self, fields: tuple[str, ...]) -> str:
        ident = field_set_id(fields)
        if ident not in self._field_sets:
            _insert_many(self._docs, [{"_id": f"fields:{ident}", "names": list(fields)}])
            self._field_sets.add(ident)
        return ident

    def _write_leaves(self, entries: list[tuple[str, bytes, str, int]]) -> None:
        start = self._frontier.size
        frontier = merkle.Frontier(start, self._frontier.hashes)
        leaves: list[dict[str, Any]] = []
        nodes = []
        leaf_hash, entry_of = merkle.leaf_hash, leaf_entry
        for offset, (record_id, digest, field_set, appended_ms) in enumerate(entries):
            index = start + offset
            leaf = leaf_hash(entry_of(index, record_id, digest, field_set, appended_ms))
            leaves.append({"i": index, "id": record_id, "d": digest, "f": field_set, "t": appended_ms, "h": leaf})
            completed = frontier.append(leaf)
            nodes += [{"_id": node_id(lv, ix), "h": h} for lv, ix, h in completed if lv >= CHUNK_LEVEL]
        by_chunk: dict[int, list[dict[str, Any]]] = {}
        for entry in leaves:
            by_chunk.setdefault(entry["i"] // CHUNK, []).append(entry)
        fresh: list[dict[str, Any]] = []
        for chunk, part in by_chunk.items():
            first = part[0]["i"] - chunk * CHUNK
            if first == 0:
                fresh.append({"_id": chunk_id(chunk), "n": len(part), "b": packed(part)})
                continue
            # Extended as stored: what is there is kept byte for byte (as a `$push` would), ours after it.
            stored = self._docs.find_one({"_id": chunk_id(chunk)})
            extended = False
            if stored is not None and stored.get("n") == first:
                update: dict[str, Any] = {"$set": {"n": first + len(part), "b": stored_bytes(stored) + packed(part)}}
                if "e" in stored:
                    update["$unset"] = {"e": ""}
                extended = self._docs.update_one({"_id": chunk_id(chunk), "n": first}, update).matched_count == 1
            if not extended:
                self._rewrite_chunk(chunk, part, start)
        docs = fresh + nodes
        for position in sorted(_insert_many(self._docs, docs)):
            doc = docs[position]
            if position < len(fresh):
                self._rewrite_chunk(int(str(doc["_id"]).split(":")[1]), chunk_entries(doc), start)
            else:  # a node left by an attempt whose head never moved: this attempt's hash replaces it
                self._docs.replace_one({"_id": doc["_id"]}, doc)
        if frontier.size != start:
            moved = self._docs.update_one(
                {"_id": HEAD, "size": start}, {"$set": {"size": frontier.size, "frontier": frontier.hashes}}
            )
            if moved.matched_count != 1:
                raise ConcurrentWriterError(f"the log's head moved past {start} under this writer")
        self._frontier = frontier

    def _rewrite_chunk(self, chunk: int, leaves: list[dict[str, Any]], start: int) -> None:
        """The `leaves` document holds entries at or past the head, left by an attempt that failed before
        moving it (or, if the head moved, another writer's): keep what is below the head, put ours after."""
        head = self._docs.find_one({"_id": HEAD}) or {}
        if int(head.get("size", -1)) != start:
            raise ConcurrentWriterError(f"leaf {leaves[0]['i']} was written by another writer")
        stored = self._docs.find_one({"_id": chunk_id(chunk)})
        kept = [e for e in chunk_entries(stored) if int(e["i"]) < start]
        if len(kept) != leaves[0]["i"] - chunk * CHUNK:
            raise ConcurrentWriterError(f"the leaves before {leaves[0]['i']} are not all stored")
        doc = {"n": len(kept) + len(leaves), "b": packed(kept + leaves)}
        if stored is None:
            try:
                self._docs.insert_one({"_id": chunk_id(chunk), **doc})
            except DuplicateKeyError as exc:
                raise ConcurrentWriterError(f"leaf {leaves[0]['i']} was written by another writer") from exc
            return
        replaced = self._docs.replace_one({"_id": chunk_id(chunk), "n": stored["n"]}, doc)
        if replaced.matched_count != 1:
            raise ConcurrentWriterError(f"leaf {leaves[0]['i']} was written by another writer")

    # ---- tree heads ----
    def sign_if_due(self, force: bool = False) -> TreeHead | None:
        """Sign the current tree if it grew by `sth_every` leaves or `sth_interval_s` passed since the
        last head (any growth, with force). Returns the new head, or None."""
        with self._lock, unavailable_is_transient():
            if not self._opened:
                return None
            self._renew_lease()
            return self._sign_if_due(self._now_ms(), force)

    def _sign_if_due(self, now_ms: int, force: bool) -> TreeHead | None:
        size, last = self._frontier.size, self._latest
        if size == 0 or (last is not None and last.size >= size):
            return None
        due = (
            force
            or last is None
            or size - last.size >= self._sth_every
            or now_ms - last.timestamp_ms >= self._sth_interval_ms
        )
        if not due:
            return None
        root = self._frontier.root()
        head = TreeHead(
            size, now_ms, root, self._signer.sign(tree_head_message(size, now_ms, root)), self._signer.public_key,
            last.size if last else None,
        )  # fmt: skip
        if _insert_many(self._docs, [{"_id": sth_id(size), **head.to_doc()}]):
            stored = self._docs.find_one({"_id": sth_id(size)}) or {}
            if bytes(stored.get("root", b"")) != root:
                raise ConcurrentWriterError(f"a different tree head of size {size} is stored")
            head = TreeHead.from_doc(stored)
        self._docs.replace_one({"_id": LATEST_STH}, head.to_doc(), upsert=True)
        self._latest = head
        return head

    def close(self) -> None:
        """Sign what is unsigned and hand the lease back, so a successor need not wait for it to expire."""
        with self._lock:
            if not self._opened:
                return
            try:
                with unavailable_is_transient():
                    self._sign_if_due(self._now_ms(), force=True)
                    self._docs.delete_one({"_id": LEASE, "owner": self._owner})
            except TransientError:
                log.warning("audit log: could not sign or release the lease at stop")
            self._opened = False


class TamperLogSink:
    """The audit consumer's sink: `write()` is called with each flushed batch, after the records are
    stored and before offsets are committed, so a crash in between appends the replayed batch."""

    def __init__(self, tamper_log: TamperLog) -> None:
        self._log = tamper_log

    def write(self, records: Sequence[AuditRecord]) -> None:
        self._log.append(records)
