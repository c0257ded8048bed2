"""What this gateway keeps in its state folder: which deliveries it stored (so a redelivered event
is not stored twice, though a later send of it is: `send_action`, and a StudyComplete manifest can be
checked), and its dead letters.

- `stored.sqlite3`: one row per stored delivery id with its SHA-256, and the id of the STORED receipt
  that reported it (`receipt_ids`). WAL with synchronous=NORMAL: a killed process loses nothing; a
  power cut may lose the last rows, which only means a re-send. And per instance (its UIDs as
  delivered) the newest send stored (`InstanceVersion`), so an older one that comes after it on another
  priority lane is not stored over it.
- `dead-letters/<delivery id>.json`: the delivery (protobuf, base64) with the target's last status,
  the attempts and where it was read from; one file per delivery id, written atomically.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import sqlite3
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from enum import Enum
from pathlib import Path

from services.common.blob_store import fsync_directory, replace_atomically
from services.proto_gen.imx.v1 import events_pb2

_DELIVERY_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}\Z")


def safe_delivery_id(delivery_id: str) -> str:
    """Delivery ids become file names: a hostile event must not name a path."""
    if not _DELIVERY_ID.match(delivery_id):
        raise ValueError("invalid delivery id")
    return delivery_id


@dataclass(frozen=True)
class InstanceVersion:
    """Which send of one SOP Instance UID a delivery is: the later ingest, then the greater delivery id
    (the order delivery keeps, services/delivery/delivered.py `_older_than`)."""

    instance: str  # "<study>/<series>/<sop>" as delivered
    ingested_at_ms: int
    delivery_id: str

    @classmethod
    def of(cls, delivery: events_pb2.PartnerDelivery) -> InstanceVersion:
        """A delivery without an ingest time is older than every one with one, as delivery has it."""
        i = delivery.instance
        instance = f"{i.study_instance_uid}/{i.series_instance_uid}/{i.sop_instance_uid}"
        return cls(instance, max(0, delivery.meta.ingested_at_ms), delivery.meta.event_id)

    def newer_than(self, other: InstanceVersion) -> bool:
        return (self.ingested_at_ms, self.delivery_id) > (other.ingested_at_ms, other.delivery_id)


class SendAction(Enum):
    STORE = "store"
    DUPLICATE = "duplicate"  # this delivery's object is what the target holds: not sent again
    SUPERSEDED = "superseded"  # a newer send of the instance is what the target holds: not stored over it


def send_action(
    version: InstanceVersion, newest: InstanceVersion | None, stored_before: bool, stored_at_ms: int = 0
) -> SendAction:
    """What to do with a delivery: `version` its send of the instance, `newest` the newest send of the
    instance stored here (None: none recorded), `stored_before` whether this delivery's object was
    stored here before, at `stored_at_ms`.

    This record is one gateway's: another replica that had the partition meanwhile, or an earlier
    release rolled back to, may have stored another send over what it says the target holds. So a later
    send of the delivery recorded (ingest publishes an event again under its id, with the new send's
    time, when its mark was lost) is stored again, not taken for a repeat: it is the newest send as
    delivery has it, and storing it costs one C-STORE in a rare case, where a repeat's receipt would have
    had delivery mark it stored while the target held another. And an older send of that delivery with
    other content (the same source de-identified under another profile: one delivery id, another
    object) is not stored over the newer one. A record of an earlier release kept no sends: there, a send
    ingested after this delivery's object was stored is a later one."""
    if newest is None:
        later = version.ingested_at_ms > stored_at_ms > 0
        return SendAction.DUPLICATE if stored_before and not later else SendAction.STORE
    if newest.delivery_id != version.delivery_id:
        return SendAction.SUPERSEDED if newest.newer_than(version) else SendAction.STORE
    if version.ingested_at_ms > newest.ingested_at_ms:
        return SendAction.STORE
    if version.ingested_at_ms < newest.ingested_at_ms and not stored_before:
        return SendAction.SUPERSEDED
    return SendAction.DUPLICATE if stored_before else SendAction.STORE


@dataclass(frozen=True)
class Judged:
    """A delivery as this gateway's record sees it (`StoredRecords.judge`)."""

    action: SendAction
    version: InstanceVersion
    stored_at_ms: int  # when this delivery's object was stored here (a DUPLICATE), else 0
    again: bool  # this delivery was stored here before: a new store of it, or a dead letter, has its own id
    recorded_receipt_id: str | None  # a DUPLICATE's: the id its store was reported under (None: not recorded)
    by_same_delivery: bool = False  # a SUPERSEDED one's: the newer send stored is of this delivery id too


class StoredRecords:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS stored (delivery_id TEXT PRIMARY KEY, sha256 TEXT NOT NULL,"
            " study TEXT NOT NULL, stored_at_ms INTEGER NOT NULL)"
        )
        # A table of its own, not a column of `stored`: an earlier release, rolled back to, still writes
        # `stored` by position. A row without one (stored by such a release) had the first store's id.
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS receipt_ids (delivery_id TEXT PRIMARY KEY, receipt_id TEXT NOT NULL)"
        )
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS versions (instance TEXT PRIMARY KEY, ingested_at_ms INTEGER NOT NULL,"
            " delivery_id TEXT NOT NULL, stored_at_ms INTEGER NOT NULL)"
        )

    def add(
        self,
        delivery_id: str,
        sha256: str,
        study: str,
        stored_at_ms: int,
        version: InstanceVersion | None = None,
        receipt_id: str | None = None,
    ) -> None:
        """The delivery stored, with the id of the receipt that reports it, and, with its `version`, the
        instance's newest send stored (in one transaction)."""
        self._db.execute("BEGIN")
        try:
            self._db.execute(
                "INSERT OR REPLACE INTO stored (delivery_id, sha256, study, stored_at_ms) VALUES (?, ?, ?, ?)",
                (delivery_id, sha256, study, stored_at_ms),
            )
            if receipt_id is None:
                self._db.execute("DELETE FROM receipt_ids WHERE delivery_id = ?", (delivery_id,))
            else:
                self._db.execute("INSERT OR REPLACE INTO receipt_ids VALUES (?, ?)", (delivery_id, receipt_id))
            if version is not None:
                self._note(version, stored_at_ms)
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:  # SQLite rolls back itself on some errors (a full disk)
                self._db.execute("ROLLBACK")
            raise

    def _note(self, version: InstanceVersion, stored_at_ms: int) -> None:
        """Stored over the target's object: this send is what it holds now, whatever was recorded."""
        self._db.execute(
            "INSERT OR REPLACE INTO versions VALUES (?, ?, ?, ?)",
            (version.instance, version.ingested_at_ms, version.delivery_id, stored_at_ms),
        )

    def newest(self, instance: str) -> InstanceVersion | None:
        """The newest send of the instance stored here (None: none recorded, e.g. stored by an earlier
        release, which kept no sends)."""
        row = self._db.execute(
            "SELECT ingested_at_ms, delivery_id FROM versions WHERE instance = ?", (instance,)
        ).fetchone()
        return InstanceVersion(instance, int(row[0]), str(row[1])) if row else None

    def judge(self, delivery: events_pb2.PartnerDelivery) -> Judged:
        """Store, repeat or superseded (`send_action`), from this record, for the loop and the replay alike."""
        row = self._row(delivery.meta.event_id)
        stored_before = row is not None and row[0] == delivery.blob.sha256
        version = InstanceVersion.of(delivery)
        newest = self.newest(version.instance)
        action = send_action(version, newest, stored_before, row[1] if row else 0)
        # Stored here before and now stored again (stored over meanwhile by another delivery of the
        # instance, or sent again later): a new store, reported under an id of its own, so audit
        # keeps it and delivery does not take the first store's receipt for it (receipts.py).
        again = row is not None
        if action is SendAction.DUPLICATE and row is not None:
            return Judged(action, version, int(row[1]), again, row[2])
        same = newest is not None and newest.delivery_id == version.delivery_id
        return Judged(action, version, 0, again, None, by_same_delivery=action is SendAction.SUPERSEDED and same)

    def stored(self, delivery_id: str) -> tuple[str, int] | None:
        """(sha256, stored_at_ms) of a delivery this gateway stored, None when it did not."""
        row = self._row(delivery_id)
        return (row[0], row[1]) if row else None

    def _row(self, delivery_id: str) -> tuple[str, int, str | None] | None:
        row = self._db.execute(
            "SELECT sha256, stored_at_ms, receipt_id FROM stored LEFT JOIN receipt_ids USING (delivery_id)"
            " WHERE delivery_id = ?",
            (delivery_id,),
        ).fetchone()
        return (str(row[0]), int(row[1]), row[2]) if row else None

    def missing(self, manifest: list[tuple[str, str]]) -> int:
        """How many (delivery id, sha256) of a manifest this gateway has not stored as that object."""
        missing = 0
        for delivery_id, sha256 in manifest:
            earlier = self.stored(delivery_id)
            missing += earlier is None or earlier[0] != sha256
        return missing

    def count(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM stored").fetchone()[0])

    def close(self) -> None:
        self._db.close()


@dataclass(frozen=True)
class DeadLetter:
    delivery_id: str
    status: str  # the target's (or source's) last status, e.g. "0xA700", "sha256-mismatch"
    attempts: int
    target_kind: str
    dead_lettered_at_ms: int
    topic: str
    partition: int
    offset: int
    delivery_b64: str  # the PartnerDelivery as received: the reference to fetch again

    def delivery(self) -> events_pb2.PartnerDelivery:
        return events_pb2.PartnerDelivery.FromString(base64.b64decode(self.delivery_b64))


def _read(path: Path) -> DeadLetter | None:
    """The dead letter a file holds; None when it holds none (gone since listed, damaged, by hand)."""
    try:
        return DeadLetter(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


class UnreadableDeadLetter(Exception):
    """A dead letter's file does not hold one."""


class DeadLetters:
    def __init__(self, folder: Path) -> None:
        self._folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        # The file names there: `settle` asks for each stored delivery, so it is answered without a syscall.
        self._names = {path.name for path in folder.glob("*.json")}

    def _path(self, delivery_id: str) -> Path:
        return self._folder / f"{safe_delivery_id(delivery_id)}.json"

    def put(
        self,
        delivery: events_pb2.PartnerDelivery,
        status: str,
        attempts: int,
        target_kind: str,
        at_ms: int,
        where: tuple[str, int, int] = ("", -1, -1),
    ) -> DeadLetter:
        letter = DeadLetter(
            delivery_id=delivery.meta.event_id,
            status=status,
            attempts=attempts,
            target_kind=target_kind,
            dead_lettered_at_ms=at_ms,
            topic=where[0],
            partition=where[1],
            offset=where[2],
            delivery_b64=base64.b64encode(delivery.SerializeToString(deterministic=True)).decode(),
        )
        document = json.dumps(asdict(letter), indent=1).encode()
        path = self._path(letter.delivery_id)
        replace_atomically(path, lambda out: out.write(document))
        fsync_directory(self._folder)  # its name too: the receipt that says DEAD_LETTERED goes out next
        self._names.add(path.name)
        return letter

    def get(self, delivery_id: str) -> DeadLetter | None:
        """The dead letter, None when there is none; `UnreadableDeadLetter` when its file is damaged."""
        path = self._path(delivery_id)
        if not path.exists():
            return None
        letter = _read(path)
        if letter is None:
            raise UnreadableDeadLetter(delivery_id)
        return letter

    def __iter__(self) -> Iterator[DeadLetter]:
        """The readable ones (`unreadable` names the others)."""
        for path in sorted(self._folder.glob("*.json")):
            if (letter := _read(path)) is not None:
                yield letter

    def unreadable(self) -> list[str]:
        """File names in the folder that do not hold a dead letter (damaged, or written by hand)."""
        return [path.name for path in sorted(self._folder.glob("*.json")) if _read(path) is None]

    def remove(self, delivery_id: str) -> None:
        self._unlink(self._path(delivery_id).name)

    def settle(self, delivery_id: str) -> None:
        """The delivery is stored: a dead letter for it, left by a run killed before its offset was
        committed, is removed (listed, then replayed, it reached the target a second time)."""
        name = f"{delivery_id}.json"
        if name in self._names:  # only ever a file name there, so a hostile id names nothing else
            with contextlib.suppress(OSError):  # a read-only state disk: listed still, a replay finds it stored
                self._unlink(name)

    def _unlink(self, name: str) -> None:
        (self._folder / name).unlink(missing_ok=True)
        self._names.discard(name)
