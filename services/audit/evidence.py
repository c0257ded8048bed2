"""Wiring of the audit service's tamper evidence, built by the entry point: the Merkle log and its sink,
the access log's background appender, the AuditLog gRPC servicer, a ticker that appends new control-plane changes
and signs tree heads every `sth_interval_s` while the log grows, and the scheduled retention purge when
`retention_days` is set."""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Sequence
from typing import Any, Protocol

from pymongo.database import Database

from services.audit.access_appender import BackgroundAccessLog
from services.audit.access_log import AccessLog
from services.audit.keyed_retention import KeyedPurge
from services.audit.log_admin import register_audit_log
from services.audit.log_sources import ChangeTail, LoggedDocuments
from services.audit.records import AuditRecord
from services.audit.retention import CollectionRecordDeleter, Retention, run_retention
from services.audit.settings import AuditSettings
from services.audit.signing import load_or_create_key
from services.audit.store import RecordWriter
from services.audit.tamper_log import StoreClaims, StoredTree, TamperLog, TamperLogSink
from services.common.control_changes import CHANGES_COLLECTION
from services.common.control_server import ServicerRegistration
from services.common.messages import TransientError

log = logging.getLogger(__name__)


class TamperEvidence:
    def __init__(self, settings: AuditSettings, db: Database[dict[str, Any]]) -> None:
        self._settings = settings
        docs = db[settings.log_collection]
        records = db[settings.audit_collection]
        self._signer = load_or_create_key(settings.signing_key_file)
        owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        # Opened by its first append, not here: a predecessor's lease may still have seconds to run, and
        # that wait belongs to the bus's retries, not to start-up.
        self.log = TamperLog(
            docs,
            self._signer,
            owner,
            sth_every=settings.sth_every,
            sth_interval_s=settings.sth_interval_s,
            lease_s=settings.log_lease_s,
        )
        self.sink = TamperLogSink(self.log)
        self._access = db[access_collection(settings)]
        self._log_docs = docs
        self._appender: BackgroundAccessLog | None = None
        self._changes = ChangeTail(db[CHANGES_COLLECTION], docs, self.log)
        self.servicer: ServicerRegistration = register_audit_log(
            StoredTree(docs),
            LoggedDocuments(records, self._access, db[CHANGES_COLLECTION]),
            self._signer.public_key,
            pages=db[f"{records.name}_pages"],
        )
        self._retention = (
            Retention(
                self._signer,
                StoredTree(docs),
                CollectionRecordDeleter(records, db[f"{records.name}_marks"]),
                settings.retention_days,
                keyed=KeyedPurge(records),
            )
            if settings.retention_days
            else None
        )
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        tick = min(self._settings.sth_interval_s, 5.0)
        self._threads.append(threading.Thread(target=self._sign_periodically, args=(tick,), name="audit-sth"))
        if self._retention is not None:
            args = (self._retention, self._settings.retention_every_s, self._stop)
            self._threads.append(threading.Thread(target=run_retention, args=args, name="audit-retention"))
        for thread in self._threads:
            thread.daemon = True
            thread.start()
        if self._appender is not None:
            self._appender.start()

    def access_log(self, stored: AccessLog) -> AccessLog:
        """The analysts' queries, stored by `stored` (in the access collection) before each answer leaves
        and appended to the log by a background appender shortly after (services/audit/access_appender.py)."""
        self._appender = BackgroundAccessLog(stored, self._access, self._log_docs, self.log)
        return self._appender

    def _sign_periodically(self, every_s: float) -> None:
        while not self._stop.wait(every_s):
            self._append_changes()
            try:
                self.log.sign_if_due()
            except TransientError:
                log.warning("audit log: tree head not signed this time (store unavailable or lease lost)")
            except Exception as error:  # the thread must outlive it: signing stopped for good otherwise
                log.error("audit log: tree head not signed this time", extra={"error": type(error).__name__})

    def _append_changes(self) -> None:
        try:
            self._changes.poll()
        except TransientError:
            log.warning("audit log: control-plane changes not appended this time (store unavailable or lease lost)")
        except Exception as error:  # as above: the next round tries again
            log.error("audit log: control-plane changes not appended this time", extra={"error": type(error).__name__})

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)
        self._append_changes()
        if self._appender is not None:
            self._appender.close()
        self.log.close()


def access_collection(settings: AuditSettings) -> str:
    return f"{settings.audit_collection}_access"


class ClaimingStore(RecordWriter, Protocol):
    """A record store that keeps the log's claim in the records it inserts (MongoAuditStore)."""

    def insert_new(self, records: Sequence[AuditRecord], log_since: int | None = None) -> set[str]: ...

    def log_since(self, record_id: str) -> int | None: ...


class LoggedWriter:
    """A RecordWriter that appends what it stores to the log, for a handler without `sinks`: the records
    are stored first, then logged, both before the bus commits the batch. The store's insert is the log's
    claim (tamper_log.StoreClaims): the log's next index is read first and kept in each record inserted,
    so the log writes no `leafof:` document per record."""

    def __init__(self, store: ClaimingStore, tamper_log: TamperLog) -> None:
        self._store = store
        self._log = tamper_log

    def insert(self, records: Sequence[AuditRecord]) -> int:
        new = self._store.insert_new(records, self._log.next_index())
        self._log.append(records, StoreClaims(new, self._store.log_since))
        return len(new)
