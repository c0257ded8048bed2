"""The partner's side of `make chaos` and what the run reads back: the partner's PACS (a dcmtk
`storescp` keeping every object it is sent in a file of its own, so a second copy is seen), a scanner
that enters what it stored in the ledger, and a reader of the quarantine topic."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Mapping
from io import BytesIO
from pathlib import Path

from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from pydicom import Dataset, dcmread

from services.common.service_access import central_gateway_group
from services.common.topics import Topics
from services.proto_gen.imx.v1 import events_pb2
from tools.chaos_ledger import Arrival, Ledger, read_mark
from tools.devstack.processes import ManagedProcess, await_ready, can_connect, start_process
from tools.dicom_peers import DCMTK_ENV
from tools.feed_backlog import skip_to_end

PACS_AE = "CHAOSPACS"
SETTLED_S = 2.0


class Pacs:
    """storescp on a fixed port, stopped and started again for the PACS-down phase."""

    def __init__(self, folder: Path, port: int) -> None:
        self.folder, self.port = folder, port
        self.process: ManagedProcess | None = None
        folder.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"dicom://{PACS_AE}@127.0.0.1:{self.port}"

    def start(self) -> None:
        self.process = start_process(
            f"chaos-storescp-{self.port}",
            # +B: the bytes as received; +uf: a new file per object, so an object sent twice is two files.
            [
                "storescp",
                "--aetitle",
                PACS_AE,
                "--output-directory",
                str(self.folder),
                "+B",
                "+uf",
                # +xd: the PACS takes deflated data sets, as many do. Without it the gateway must inflate
                # each accepted deflate bomb (up to 768 MiB, ~60 in a full run) and send that: 30-130 s
                # apiece and ~46 GB written here, a test of disk and patience rather than of imx (that
                # conversion is tested apart: tests/integration/gateway/test_deflated_conversion.py).
                # A bomb whose deflated body has an odd length is aborted by storescp ("Odd Fragment
                # Length"); the gateway dead-letters it with the reason "aborted".
                "+xd",
                "--max-pdu",
                "131072",
                str(self.port),
            ],
            self.folder.parent / "storescp.log",
            env={**os.environ, **DCMTK_ENV},
            endpoint=f"127.0.0.1:{self.port}",
            die_with_parent=True,
        )
        await_ready(self.process, lambda p: can_connect(self.port), timeout=15)

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(timeout=5)
            self.process = None


def meta_end(part10: bytes) -> int:
    """Where the data set starts: after the preamble, "DICM" and the file meta group (its length is
    the value of (0002,0000), the group's first element, PS3.10 7.1)."""
    return 144 + int.from_bytes(part10[140:144], "little")


def sop_uid_of(data: bytes) -> str:
    """The SOP Instance UID the PACS stored the file under: storescp writes the file meta from the
    C-STORE request, so that is read alone first (a deflated body, up to 768 MiB inflated for a deflate
    bomb, is never inflated for it: pydicom's dcmread inflates the whole body before it reads a tag);
    the data set's own is read only when the meta has none. A delivered malformed input can break
    pydicom in any way (an unknown VR on the UID raises NotImplementedError), and the scanner must
    outlive every one of them."""
    for part in (data[: meta_end(data)], data):
        try:
            ds = dcmread(BytesIO(part), stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
        except Exception:
            continue
        if uid := _uid_of(ds):
            return uid
    return ""


def _uid_of(ds: Dataset) -> str:
    for read in (lambda: ds.file_meta.get("MediaStorageSOPInstanceUID", ""), lambda: ds.get("SOPInstanceUID", "")):
        try:
            uid = str(read() or "")
        except Exception:
            continue
        if uid:
            return uid
    return ""


def folder_bytes(folder: Path) -> int:
    """Bytes in the files of `folder` (not below it), growing while a file is written; a file that
    goes away meanwhile counts nothing."""
    total = 0
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    for entry in entries:
        try:
            total += entry.stat(follow_symlinks=False).st_size if entry.is_file(follow_symlinks=False) else 0
        except OSError:
            continue
    return total


class Scanner:
    """Enters every new file in the PACS's folder in the ledger, on a thread of its own."""

    def __init__(self, folder: Path, ledger: Ledger, lock: threading.Lock, token: bytes, started: float) -> None:
        self._folder, self._ledger, self._lock, self._token, self._t0 = folder, ledger, lock, token, started
        self._seen: set[str] = set()
        self.delivered_uids: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chaos-scanner", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self.scan()

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            self.scan()

    def scan(self) -> int:
        new = 0
        for path in sorted(self._folder.iterdir()):
            if path.name in self._seen or path.name.startswith("."):
                continue
            try:
                # storescp writes under the final name as the data arrives: a file is read once it has
                # not changed for a while (a partial read would miss the mark at its end).
                if time.time() - path.stat().st_mtime < SETTLED_S:
                    continue
                data = path.read_bytes()
            except OSError:
                continue
            self._seen.add(path.name)
            uid = sop_uid_of(data)
            arrival = Arrival(
                uid, hashlib.sha256(data).hexdigest(), read_mark(data, self._token), time.monotonic() - self._t0
            )
            with self._lock:
                self._ledger.arrivals.append(arrival)
                self.delivered_uids.add(uid)
            new += 1
        return new


def skip_leftovers(bootstrap: str, topics: Topics, partner: str, client_config: Mapping[str, str]) -> int:
    """Move the partner's central gateway group to the end of its feed (every lane): what an interrupted
    earlier run left there would be delivered before this run's instances and stall its clock. Only
    while the group has no member (the partner has no endpoint: the previous run cleared it). Returns
    how many messages were skipped."""
    group = central_gateway_group(partner, topics.prefix)
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, **client_config)
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, metrics_enabled=False, **client_config)
    try:
        return skip_to_end(admin, consumer, group, topics.partner_lanes(partner))
    finally:
        consumer.close()
        admin.close()


class QuarantineReader:
    """From now on, as the broker's admin (assigned, not in a group; kafka-python reconnects across a
    broker restart): quarantine events of the run's senders, the partner gateway's dead-letter receipts
    (an instance it gave up storing, with the PACS's answer as the reason) and the pipeline's dead
    letters (counted)."""

    def __init__(
        self,
        bootstrap: str,
        topics: Topics,
        client_config: Mapping[str, str],
        orgs: tuple[str, str],
        partner: str,
        ledger: Ledger,
        lock: threading.Lock,
    ) -> None:
        self._consumer = KafkaConsumer(
            bootstrap_servers=bootstrap,
            enable_auto_commit=False,
            metrics_enabled=False,
            group_id=None,
            **client_config,
        )
        self._topics = (topics.quarantine, topics.receipts(partner), topics.dead_letter)
        partitions = [
            TopicPartition(topic, p) for topic in self._topics for p in self._consumer.partitions_for_topic(topic) or ()
        ]
        self._consumer.assign(partitions)
        self._consumer.seek_to_end(*partitions)
        for tp in partitions:
            self._consumer.position(tp)
        self._orgs, self._ledger, self._lock = orgs, ledger, lock
        self.reasons: dict[str, int] = {}
        self.door_events = 0  # the malformed-input sender's instances quarantined by ingest
        self.dead_lettered: dict[str, str] = {}  # SOP Instance UID as delivered -> the gateway's reason
        self.pipeline_dead_letters = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chaos-quarantine", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self._consumer.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                batches = self._consumer.poll(timeout_ms=500)
            except Exception:
                time.sleep(1.0)
                continue
            for records in batches.values():
                for record in records:
                    self._record(record.topic, record.value)

    def _record(self, topic: str, value: bytes) -> None:
        quarantine, receipts, _ = self._topics
        with self._lock:
            if topic == receipts:
                receipt = events_pb2.DeliveryReceipt.FromString(value)
                if receipt.status == events_pb2.STORE_STATUS_DEAD_LETTERED:
                    self.dead_lettered[receipt.instance.sop_instance_uid] = f"gateway:{receipt.detail}"
                return
            if topic != quarantine:
                self.pipeline_dead_letters += 1
                return
            event = events_pb2.Quarantined.FromString(value)
            if event.source_org not in self._orgs:
                return
            key = f"{event.stage}:{event.reason}"
            self.reasons[key] = self.reasons.get(key, 0) + 1
            if event.instance.sop_instance_uid:
                self._ledger.note_quarantine(event.instance.sop_instance_uid, key)
            if event.source_org == self._orgs[1] and event.stage == "ingest":
                self.door_events += 1
