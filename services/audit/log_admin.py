"""The AuditLog gRPC servicer: the signed tree head and a full verification (services/audit/log_verify.py)."""

from __future__ import annotations

import time
from functools import partial
from typing import Any

import grpc
from pymongo.collection import Collection

from services.audit.log_verify import KnownHead, RecordSource, checkpoint_signed, verify_log
from services.audit.page_verify import verify_pages
from services.audit.signing import fingerprint
from services.audit.tamper_log import StoredTree, TreeHead
from services.common.control_server import ServicerRegistration
from services.common.messages import TransientError
from services.proto_gen.imx.v1 import admin_pb2, admin_pb2_grpc


def _head(head: TreeHead) -> admin_pb2.SignedTreeHead:
    return admin_pb2.SignedTreeHead(
        tree_size=head.size,
        timestamp_ms=head.timestamp_ms,
        root_hash=head.root,
        signature=head.signature,
        key_fingerprint=fingerprint(head.public_key),
    )


class AuditLogServicer(admin_pb2_grpc.AuditLogServicer):
    def __init__(
        self,
        tree: StoredTree,
        records: RecordSource,
        public_key: bytes,
        pages: Collection[dict[str, Any]] | None = None,
    ) -> None:
        """`pages`: the pages analysts read (the store's N_pages), checked against the records too."""
        self._tree = tree
        self._records = records
        self._public_key = public_key
        self._pages = pages

    def GetTreeHead(
        self, request: admin_pb2.GetTreeHeadRequest, context: grpc.ServicerContext
    ) -> admin_pb2.GetTreeHeadReply:
        try:
            head, size = self._tree.tree_head(), self._tree.size()
        except TransientError as error:
            context.abort(grpc.StatusCode.UNAVAILABLE, str(error))
        reply = admin_pb2.GetTreeHeadReply(found=head is not None, tree_size=size, public_key=self._public_key)
        if head is not None:
            reply.head.CopyFrom(_head(head))
        return reply

    def VerifyAuditLog(
        self, request: admin_pb2.VerifyAuditLogRequest, context: grpc.ServicerContext
    ) -> admin_pb2.VerifyAuditLogReply:
        known = None
        if request.known_tree_size:
            if len(request.known_root_hash) != 32:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "known_root_hash must be 32 bytes")
            known = KnownHead(request.known_tree_size, request.known_root_hash)
        began = time.monotonic()
        try:
            # A tree of its own: verification reads a checkpoint's frontier into it.
            tree = StoredTree(self._tree.collection)
            limit = request.max_findings or 100
            report = verify_log(tree, self._records, self._public_key, known, limit)
            if self._pages is not None and not request.skip_pages:
                purged_before = partial(purged_before_ms, tree, self._public_key)
                verify_pages(self._pages, self._records, purged_before, report, limit)
        except TransientError as error:
            context.abort(grpc.StatusCode.UNAVAILABLE, str(error))
        reply = admin_pb2.VerifyAuditLogReply(
            ok=report.ok,
            tree_size=report.tree_size,
            leaves_checked=report.leaves_checked,
            purged_to=report.purged_to,
            tree_heads_checked=report.tree_heads_checked,
            key_fingerprint=report.key_fingerprint,
            findings=[
                admin_pb2.AuditLogFinding(kind=f.kind, leaf_index=f.leaf_index, record_id=f.record_id, detail=f.detail)
                for f in report.findings
            ],
            findings_total=report.findings_total,
            elapsed_ms=int((time.monotonic() - began) * 1000),
            page_copies_checked=report.page_copies_checked,
        )
        if report.latest is not None:
            reply.latest.CopyFrom(_head(report.latest))
        return reply


def purged_before_ms(tree: StoredTree, public_key: bytes) -> int:
    """The latest retention checkpoint's cutoff: records appended before it may have been purged. 0 for one
    this key did not sign: read again during the page check (a purge may run meanwhile), a checkpoint put
    there with a later cutoff would otherwise excuse every copy whose record was taken away."""
    checkpoint = tree.get("checkpoint:latest")
    return int(checkpoint["cutoff"]) if checkpoint and checkpoint_signed(checkpoint, public_key) else 0


def register_audit_log(
    tree: StoredTree, records: RecordSource, public_key: bytes, pages: Collection[dict[str, Any]] | None = None
) -> ServicerRegistration:
    def register(server: grpc.Server) -> None:
        admin_pb2_grpc.add_AuditLogServicer_to_server(AuditLogServicer(tree, records, public_key, pages), server)

    return register
