"""Verification of the audit log against the stored records (`imx audit verify`, gRPC VerifyAuditLog).

Trust comes from the signing key alone: everything in the database may have been edited. Each leaf is
recomputed from the record it names (read by `_id`) and compared with the leaf as appended; the tree
rebuilt from those recomputed leaves must reproduce the root of every signed tree head; consecutive
tree heads must be consistent (RFC 9162 §2.1.4 proofs built from the stored subtree hashes, the ones
the log would show anyone else); and a tree head the caller saw before must still be a prefix of the log.
Findings name what was tampered with:

- `changed`: the record at leaf i no longer has the digest it was appended with.
- `deleted`: the record leaf i names is gone.
  Leaves also name the analysts' queries (`access:<_id>`) and control-plane changes (`change:<_id>`),
  read from their own collections (log_sources.py), checked the same way.
- `reordered`: leaf i is stored out of the order the log appended it in (each leaf's entry also holds its
  index, so moving one changes the tree).
- `leaf_altered`: leaf i's stored entry does not hash to its stored leaf hash.
- `leaf_missing` / `truncated`: a leaf below the head (or the latest signed size) is gone; `truncated`
  when the log is shorter than a signed or previously seen tree head.
- `tree_head_mismatch`: the recomputed tree does not reproduce a signed root: leaves were rewritten
  together with their hashes somewhere in (previous head, this head].
- `bad_signature`, `inconsistent`, `bad_checkpoint`, `unknown_field_set`.

After a retention purge (retention.py) the check starts at the signed checkpoint: its frontier hashes
must fold to its signed root, and the retained leaves are appended to that frontier.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from pymongo.collection import Collection

from services.audit import merkle
from services.audit.log_entries import EXCLUDED_FIELDS, leaf_entry, record_digest, unpacked
from services.audit.log_sources import is_side_entry
from services.audit.records import RECORD_FIELDS
from services.audit.signing import checkpoint_message, fingerprint, verify_signature
from services.audit.tamper_log import CHUNK, StoredTree, TreeHead, unavailable_is_transient

MAX_FINDINGS = 100


class RecordSource(Protocol):
    def get(self, record_id: str) -> Mapping[str, Any] | None: ...


@dataclass(frozen=True)
class Finding:
    kind: str
    leaf_index: int = -1
    record_id: str = ""
    detail: str = ""


@dataclass(frozen=True)
class KnownHead:
    """A tree head the verifier saw before (RFC 9162 clients keep the last one they trusted)."""

    size: int
    root: bytes


@dataclass
class VerifyReport:
    tree_size: int = 0
    leaves_checked: int = 0
    page_copies_checked: int = 0  # page_verify.py
    purged_to: int = 0
    tree_heads_checked: int = 0
    latest: TreeHead | None = None
    key_fingerprint: str = ""
    findings: list[Finding] = field(default_factory=list)
    findings_total: int = 0

    @property
    def ok(self) -> bool:
        return self.findings_total == 0

    def add(self, finding: Finding, limit: int) -> None:
        self.findings_total += 1
        if len(self.findings) < limit:
            self.findings.append(finding)


def checkpoint_signed(doc: Mapping[str, Any], public_key: bytes) -> bool:
    """Whether a retention checkpoint's document is signed by `public_key`, as it stands."""
    message = checkpoint_message(int(doc["purged_to"]), int(doc["ts"]), bytes(doc["root"]), int(doc["cutoff"]))
    return verify_signature(public_key, message, bytes(doc["sig"]))


def _checkpoint_start(tree: StoredTree, public_key: bytes, report: VerifyReport, limit: int) -> merkle.Frontier:
    doc = tree.get("checkpoint:latest")
    if doc is None:
        return merkle.Frontier()
    purged_to, hashes = int(doc["purged_to"]), [bytes(h) for h in doc["frontier"]]
    if not checkpoint_signed(doc, public_key):
        report.add(Finding("bad_checkpoint", detail=f"the checkpoint at {purged_to} is not signed by this key"), limit)
    try:
        frontier = merkle.Frontier(purged_to, hashes)
    except ValueError:
        report.add(Finding("bad_checkpoint", detail=f"the checkpoint at {purged_to} has a malformed frontier"), limit)
        return merkle.Frontier()
    if frontier.root() != bytes(doc["root"]):
        report.add(Finding("bad_checkpoint", detail="the checkpoint's frontier does not fold to its root"), limit)
    tree.use_purged_frontier(purged_to, hashes)
    report.purged_to = purged_to
    return frontier


def _check_leaf(
    index: int, leaf: Mapping[str, Any], records: RecordSource, field_sets: dict[str, list[str] | None],
    tree: StoredTree, report: VerifyReport, limit: int,
) -> bytes:  # fmt: skip
    """Checks leaf `index` and returns the leaf hash recomputed from its record (or as stored, when the
    record cannot be read: the finding already names it)."""
    record_id, digest, field_set, appended = str(leaf["id"]), bytes(leaf["d"]), str(leaf["f"]), int(leaf["t"])
    stored_hash = bytes(leaf["h"])
    if merkle.leaf_hash(leaf_entry(index, record_id, digest, field_set, appended)) != stored_hash:
        report.add(Finding("leaf_altered", index, record_id, "the stored leaf entry does not match its hash"), limit)
    if field_set not in field_sets:
        doc = tree.get(f"fields:{field_set}")
        field_sets[field_set] = list(doc["names"]) if doc else None
    names = field_sets[field_set]
    record = records.get(record_id)
    if record is None:
        report.add(Finding("deleted", index, record_id, "the record is gone"), limit)
        return stored_hash
    if names is None:
        report.add(Finding("unknown_field_set", index, record_id, f"field set {field_set} is gone"), limit)
        return stored_hash
    actual = record_digest(record, names)
    covered = set(names) | EXCLUDED_FIELDS
    # An access entry or control change is covered field by field as stored; a record may hold the store's
    # own fields (`_b`) beside AuditRecord's.
    others = record.keys() if is_side_entry(record_id) else RECORD_FIELDS
    if actual != digest or any(record.get(n) is not None for n in others if n not in covered):
        report.add(Finding("changed", index, record_id, "the record differs from what was appended"), limit)
    return merkle.leaf_hash(leaf_entry(index, record_id, actual, field_set, appended))


def verify_log(
    tree: StoredTree,
    records: RecordSource,
    public_key: bytes,
    known: KnownHead | None = None,
    limit: int = MAX_FINDINGS,
) -> VerifyReport:
    report = VerifyReport(tree_size=tree.size(), key_fingerprint=fingerprint(public_key))
    heads = tree.tree_heads()
    report.latest = heads[-1] if heads else None
    for head in heads:
        if head.public_key != public_key or not verify_signature(public_key, head.message(), head.signature):
            report.add(Finding("bad_signature", detail=f"the tree head of size {head.size} is not signed by this key"),
                       limit)  # fmt: skip
    frontier = _checkpoint_start(tree, public_key, report, limit)
    start, frontier_root = frontier.size, frontier.root()
    claimed = max([report.tree_size, *(h.size for h in heads), known.size if known else 0])
    if claimed > report.tree_size:
        report.add(Finding("truncated", report.tree_size, detail=f"the log has {report.tree_size} leaves, a tree head "
                           f"says {claimed}: leaves {report.tree_size}..{claimed - 1} are gone"), limit)  # fmt: skip
    roots_at = {h.size: ("signed tree head", h.root) for h in heads if h.size >= start}
    if known and known.size >= start:
        roots_at.setdefault(known.size, ("previously seen tree head", known.root))
    field_sets: dict[str, list[str] | None] = {}
    broken_at: int | None = None
    last_good = start
    for index in range(start, claimed):
        if index == start or index % CHUNK == 0:
            _check_order(index // CHUNK, tree, start, report, limit)
        leaf = tree.leaf(index)
        if leaf is None and index >= report.tree_size:
            # Past the stored size: named once above, not read leaf by leaf (a claimed size of 2^63, from a
            # caller's "known" head, walked for ever).
            broken_at = index if broken_at is None else broken_at
            break
        if leaf is None:
            report.add(Finding("leaf_missing", index, detail=f"leaf {index} is gone"), limit)
            broken_at = index if broken_at is None else broken_at
            continue
        leaf_hash = _check_leaf(index, leaf, records, field_sets, tree, report, limit)
        report.leaves_checked += 1
        if broken_at is not None:
            continue
        frontier.append(leaf_hash)
        expected = roots_at.get(frontier.size)
        if expected is not None:
            report.tree_heads_checked += 1
            if frontier.root() != expected[1]:
                report.add(Finding("tree_head_mismatch", frontier.size - 1, detail=f"leaves {last_good}..{index} do "
                                   f"not reproduce the {expected[0]} of size {frontier.size}"), limit)  # fmt: skip
            last_good = frontier.size
    chain = [(start, frontier_root)] if start else []
    _check_consistency(chain + [(h.size, h.root) for h in heads if h.size > start], tree, report, limit)
    return report


def _check_order(chunk: int, tree: StoredTree, start: int, report: VerifyReport, limit: int) -> None:
    """Leaves are stored in the order they were appended; each one stored out of that order is named."""
    entries = tree.chunk(chunk)
    appended = sorted(entries, key=lambda e: int(e.get("i", -1)))
    for position, (entry, expected) in enumerate(zip(entries, appended, strict=True)):
        if entry is not expected and int(entry.get("i", -1)) >= start:
            where = chunk * CHUNK + position
            report.add(Finding("reordered", int(entry["i"]), str(entry.get("id", "")),
                               f"leaf {entry['i']} is stored in position {where}"), limit)  # fmt: skip


def _check_consistency(heads: list[tuple[int, bytes]], tree: StoredTree, report: VerifyReport, limit: int) -> None:
    """Each tree head against the one before it, with a proof from the stored subtree hashes."""
    for (old_size, old_root), (new_size, new_root) in itertools.pairwise(heads):
        try:
            proof = merkle.consistency_proof(old_size, new_size, tree.range_hash)
        except LookupError as missing:
            report.add(Finding("inconsistent", detail=f"tree heads {old_size} -> {new_size}: {missing}"), limit)
            continue
        if not merkle.verify_consistency(old_size, new_size, old_root, new_root, proof):
            report.add(Finding("inconsistent", detail=f"tree heads {old_size} -> {new_size} are not consistent"), limit)


class CollectionRecords:
    """Audit records read by `_id` from their collection, packed ones unpacked (log_entries.unpacked)."""

    def __init__(self, collection: Collection[dict[str, Any]]) -> None:
        self._records = collection

    def get(self, record_id: str) -> Mapping[str, Any] | None:
        with unavailable_is_transient():
            doc = self._records.find_one({"_id": record_id})
        return unpacked(doc) if doc is not None else None
