"""Retention of audit records (issue 8 item 6): records the log appended more than `retention_days` ago
are purged, oldest first, after a signed checkpoint says which.

A purge removes a prefix of the log, leaves [old purge point, p), where p is the first leaf appended
after the cutoff (capped at the latest signed tree head and at `max_leaves` per run). Before anything
is deleted the checkpoint is stored: MTH(D[0:p]) computed from the stored subtrees and proven
consistent (RFC 9162 §2.1.4) with the latest signed tree head, the frontier of p (the perfect subtrees
of [0, p), which fold to that root), the cutoff, signed with the log's key. Verification then starts from
the checkpoint's frontier and appends the retained leaves to it, so every tree head from p on still
verifies (services/audit/log_verify.py). The deletions follow (record and any claim by `_id`, and each
`leaves` document wholly purged); a run interrupted half-way resumes from the checkpoint's `deleted_to`.

After the records, the keyed documents derived from them (pages, marks, counters, journals) of the UTC
days before the cutoff's day go too (keyed_retention.py), a day once none of its records is left. For
that, the record deleter notes each purged record's counting batch in `jd:<day>` (N_marks) before it
deletes the record: which journals the day's purge may drop.

What it does not do: records that were tampered with before they were purged are not re-checked here
(run `imx audit verify` before the retention age passes).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from pymongo.collection import Collection

from services.audit import merkle
from services.audit.keyed_retention import KeyedPurge
from services.audit.log_entries import PACKED, unpacked
from services.audit.records import to_datetime, to_epoch_ms
from services.audit.rollups import day_of
from services.audit.signing import Signer, checkpoint_message
from services.audit.tamper_log import CHUNK, StoredTree, chunk_id, claim_id, unavailable_is_transient

log = logging.getLogger(__name__)
DAY_MS = 86_400_000


class RecordDeleter(Protocol):
    def note_owners(self, record_ids: Sequence[str], pool: Executor) -> None:
        """Called before the records are deleted: whatever must be known of them afterwards."""
        ...

    def delete(self, record_id: str) -> bool:
        """Deletes the record (idempotent); True when it was there. Called from several threads."""
        ...


class CollectionRecordDeleter:
    """With `marks` (the store's N_marks), the batch that counted each record is added to `jd:<day of
    the record>` first, so the keyed purge of that day knows which journals to drop."""

    def __init__(self, collection: Collection[dict[str, Any]], marks: Collection[dict[str, Any]] | None = None) -> None:
        self._records = collection
        self._marks = marks
        self._noted: set[tuple[str, str]] = set()

    def note_owners(self, record_ids: Sequence[str], pool: Executor) -> None:
        """The records are read concurrently, the notes written one at a time: FerretDB applies an
        `$addToSet` by reading and rewriting the document, so two at once on `jd:<day>` lost one."""
        if self._marks is None:
            return
        with unavailable_is_transient():
            found = pool.map(
                lambda i: self._records.find_one({"_id": i}, {"occurred_at": 1, "_b": 1, PACKED: 1}), record_ids
            )
            for noted in dict.fromkeys(owner for doc in found if (owner := _owner(doc)) is not None):
                if noted not in self._noted:
                    self._marks.update_one({"_id": f"jd:{noted[0]}"}, {"$addToSet": {"b": noted[1]}}, upsert=True)
                    if len(self._noted) > 100_000:
                        self._noted.clear()
                    self._noted.add(noted)

    def delete(self, record_id: str) -> bool:
        with unavailable_is_transient():
            return self._records.delete_one({"_id": record_id}).deleted_count == 1


def _owner(found: dict[str, Any] | None) -> tuple[str, str] | None:
    """The record's day and the batch that counted it (None: gone, or counted by no batch)."""
    doc = unpacked(found) if found is not None else None
    if doc is None or not doc.get("_b") or doc.get("occurred_at") is None:
        return None
    return day_of(to_datetime(to_epoch_ms(doc["occurred_at"]))), str(doc["_b"])


@dataclass(frozen=True)
class PurgeResult:
    purged_to: int  # leaves [0, purged_to) are gone (or going, when deleted < ...)
    deleted: int  # records deleted by this run
    checkpoint_size: int  # the tree size the checkpoint was proven against
    capped: bool = False  # stopped at `max_leaves`: more may be past the retention age already


class RetentionError(RuntimeError):
    """The log's stored hashes do not agree with its signed tree head: nothing is purged."""


class Retention:
    def __init__(
        self,
        signer: Signer,
        tree: StoredTree,
        records: RecordDeleter,
        retention_days: float,
        max_leaves: int = 100_000,
        clock: Callable[[], float] = time.time,
        keyed: KeyedPurge | None = None,
        workers: int = 8,
    ) -> None:
        self._signer = signer
        self._tree = tree
        self._records = records
        self._retention_ms = int(retention_days * DAY_MS)
        self._max_leaves = max_leaves
        self._clock = clock
        self._keyed = keyed
        self._workers = workers

    def purge(self) -> PurgeResult:
        """Records past the retention age, then the keyed documents of the days they leave empty."""
        now_ms = int(self._clock() * 1000)
        cutoff = now_ms - self._retention_ms
        result = self._purge_records(now_ms, cutoff)
        if self._keyed is not None:
            with unavailable_is_transient():
                self._keyed.purge(cutoff)
        return result

    def _purge_records(self, now_ms: int, cutoff: int) -> PurgeResult:
        self._tree.forget()
        checkpoint = self._tree.get("checkpoint:latest")
        deleted = self._finish_deletes(checkpoint)
        start = int(checkpoint["purged_to"]) if checkpoint else 0
        latest = self._tree.tree_head()
        if latest is None:
            return PurgeResult(start, deleted, 0)
        end = start
        while end < min(latest.size, start + self._max_leaves):
            leaf = self._tree.leaf(end)
            if leaf is None or int(leaf["t"]) >= cutoff:
                break
            end += 1
        if end == start:
            return PurgeResult(start, deleted, latest.size)
        self._store_checkpoint(end, latest.size, latest.root, now_ms, cutoff, checkpoint)
        deleted += self._delete(start, end)
        log.info("audit retention: purged records past the retention age", extra={"instances": end - start})
        return PurgeResult(end, deleted, latest.size, capped=end - start == self._max_leaves)

    def _store_checkpoint(
        self, purged_to: int, signed_size: int, signed_root: bytes, now_ms: int, cutoff: int,
        previous: dict[str, Any] | None,
    ) -> None:  # fmt: skip
        if previous is not None:
            self._tree.use_purged_frontier(int(previous["purged_to"]), [bytes(h) for h in previous["frontier"]])
        try:
            frontier = [self._tree.block(lv, ix) for lv, ix in merkle.perfect_blocks(0, purged_to)]
            proof = merkle.consistency_proof(purged_to, signed_size, self._tree.range_hash)
        except LookupError as missing:
            raise RetentionError(f"cannot prove the purge point: {missing}") from missing
        root = merkle.fold_blocks(frontier)
        if not merkle.verify_consistency(purged_to, signed_size, root, signed_root, proof):
            raise RetentionError(f"the stored tree up to {purged_to} is not consistent with the signed head")
        signer = self._signer
        doc = {
            "purged_to": purged_to,
            "deleted_to": int(previous["purged_to"]) if previous else 0,
            "ts": now_ms,
            "cutoff": cutoff,
            "root": root,
            "frontier": frontier,
            "signed_size": signed_size,
            "sig": signer.sign(checkpoint_message(purged_to, now_ms, root, cutoff)),
            "key": signer.public_key,
        }
        with unavailable_is_transient():
            self._tree.collection.replace_one({"_id": f"checkpoint:{purged_to}"}, doc, upsert=True)
            self._tree.collection.replace_one({"_id": "checkpoint:latest"}, doc, upsert=True)

    def _finish_deletes(self, checkpoint: dict[str, Any] | None) -> int:
        if checkpoint is None or int(checkpoint.get("deleted_to", 0)) >= int(checkpoint["purged_to"]):
            return 0
        return self._delete(int(checkpoint["deleted_to"]), int(checkpoint["purged_to"]))

    def _delete(self, start: int, end: int) -> int:
        """Deletes the records of leaves [start, end), then the `leaves` documents wholly below `end`;
        returns how many records went. (A partly purged document keeps its entries: ids and digests.)
        A `leaves` document's records are deleted `workers` at a time: each costs two or three round
        trips, and one at a time a purge fell behind a sustained national load."""
        docs, deleted = self._tree.collection, 0
        tree = StoredTree(docs)
        with ThreadPoolExecutor(max_workers=self._workers, thread_name_prefix="audit-retention") as pool:
            at = start
            while at < end:
                upto = min(end, (at // CHUNK + 1) * CHUNK)  # the rest of this `leaves` document
                with unavailable_is_transient():
                    ids = [str(e["id"]) for e in tree.chunk(at // CHUNK) if at <= int(e["i"]) < upto]
                    self._records.note_owners(ids, pool)
                    deleted += sum(pool.map(self._delete_record, ids))
                    if upto % CHUNK == 0:
                        docs.delete_one({"_id": chunk_id(upto // CHUNK - 1)})
                    docs.update_one({"_id": "checkpoint:latest"}, {"$set": {"deleted_to": upto}})
                at = upto
        return deleted

    def _delete_record(self, record_id: str) -> bool:
        """The record and its claim; True when either was there. The claim goes last: present, the record
        may still be there (an interrupted run). Records the consumer stored since 2026-12-02 have none
        (tamper_log.StoreClaims)."""
        docs = self._tree.collection
        with unavailable_is_transient():
            claimed = docs.find_one({"_id": claim_id(record_id)}, {"_id": 1}) is not None
            went = self._records.delete(record_id)
            if claimed:
                docs.delete_one({"_id": claim_id(record_id)})
        return claimed or went


def run_retention(retention: Retention, every_s: float, stop: threading.Event) -> None:
    """The scheduled purge: once at start, then every `every_s` seconds until `stop`. A run that stopped at
    its cap is followed by the next at once: with one run of at most `max_leaves` (100,000) an hour, a log
    growing faster than 2.4 million records a day was never purged down to its retention age."""
    while not stop.is_set():
        try:
            while retention.purge().capped and not stop.is_set():
                pass
        except Exception:  # the schedule survives a failed run; the next one retries
            log.exception("audit retention run failed")
        stop.wait(every_s)
