"""Audit records forwarded as RFC 5424 syslog over TLS (RFC 5425) to a receiver this test starts on
127.0.0.1, with a throwaway CA and certificates: octet-counted frames, header fields, the DICOM XML as MSG,
mutual TLS, an untrusted server refused, and an outage failing the batch (so it is read again)."""

from __future__ import annotations

import datetime as dt
import re
import socket
import ssl
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pymongo import MongoClient

from services.audit.consumer import AuditHandler
from services.audit.records import AuditRecord, build_record
from services.audit.store import MongoAuditStore
from services.audit.syslog_forward import (
    BOM,
    SyslogForwarder,
    SyslogTarget,
    forwarder_from_settings,
    parse_target,
    tls_context,
)
from services.common.messages import TransientError
from services.common.topics import Topics
from tests.tls_certs import MutualTls, mutual_tls, other_ca
from tests.unit.audit.builders import Instance, incoming, journey

TOPICS = Topics("t-syslog.")
NOW = dt.datetime(2026, 2, 1, tzinfo=dt.UTC)
HEADER = re.compile(
    rb"^<(?P<pri>\d{1,3})>(?P<version>1) (?P<timestamp>\S+) (?P<hostname>\S+) (?P<app>\S+) (?P<procid>\S+) "
    rb"(?P<msgid>\S+) (?P<sd>-) (?P<msg>.*)$",
    re.DOTALL,
)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> MutualTls:
    return mutual_tls(tmp_path_factory.mktemp("pki"), client_cn="imx-audit")  # checked as the presented one


@dataclass
class Receiver:
    """An audit record repository: TLS on 127.0.0.1, octet-counted frames collected as they arrive."""

    port: int
    frames: list[bytes] = field(default_factory=list)
    client_subjects: list[str] = field(default_factory=list)
    arrived: threading.Condition = field(default_factory=threading.Condition)
    close_after: int = 0  # frames per connection, then the repository closes it (0: never)

    def wait_for(self, n: int, timeout: float = 10.0) -> list[bytes]:
        with self.arrived:
            assert self.arrived.wait_for(lambda: len(self.frames) >= n, timeout), f"{len(self.frames)} of {n} frames"
            return list(self.frames)


def _read_frames(conn: ssl.SSLSocket, receiver: Receiver) -> None:
    buffer, on_this_connection = b"", 0
    while not receiver.close_after or on_this_connection < receiver.close_after:
        chunk = conn.recv(65536)
        if not chunk:
            return
        buffer += chunk
        while b" " in buffer:
            length_text, _, rest = buffer.partition(b" ")
            assert length_text.isdigit(), f"not octet-counted: {buffer[:40]!r}"
            if len(rest) < int(length_text):
                break
            frame, buffer = rest[: int(length_text)], rest[int(length_text) :]
            on_this_connection += 1
            with receiver.arrived:
                receiver.frames.append(frame)
                receiver.arrived.notify_all()


@pytest.fixture
def receiver(pki: MutualTls) -> Iterator[Receiver]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki.server.ca_file))
    context.load_cert_chain(str(pki.server.cert_file), str(pki.server.key_file))
    context.verify_mode = ssl.CERT_REQUIRED  # mutual TLS: the forwarder must show a certificate of our CA
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    result = Receiver(port=listener.getsockname()[1])
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                raw, _ = listener.accept()
            except TimeoutError:
                continue
            try:
                with context.wrap_socket(raw, server_side=True) as conn:
                    peer = conn.getpeercert() or {}
                    result.client_subjects.append(str(peer.get("subject")))
                    _read_frames(conn, result)
            except (ssl.SSLError, OSError):
                continue

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield result
    stop.set()
    thread.join(timeout=5)
    listener.close()


def _records() -> list[AuditRecord]:
    return [build_record(incoming(m), TOPICS, NOW) for m in journey(TOPICS, Instance())]


def _forwarder(pki: MutualTls, port: int, ca: Path | None = None) -> SyslogForwarder:
    context = tls_context(ca or pki.server.ca_file, pki.client_cert_file, pki.client_key_file)
    return SyslogForwarder(SyslogTarget("127.0.0.1", port), context, hostname="imx-test-host", timeout_s=5)


def test_records_arrive_as_octet_counted_rfc5424_messages_carrying_the_dicom_xml(
    pki: MutualTls, receiver: Receiver
) -> None:
    records = _records()
    forwarder = _forwarder(pki, receiver.port)
    try:
        forwarder.write(records[:2])
        forwarder.write(records[2:])  # the same connection carries the next batch
        frames = receiver.wait_for(len(records))
    finally:
        forwarder.close()
    assert len(frames) == len(records)
    assert any("imx-audit" in s for s in receiver.client_subjects), "the forwarder presented its client certificate"
    expected_ids = ["110107", "110103", "110103", "110104", "110104"]
    for frame, record, event_id in zip(frames, records, expected_ids, strict=True):
        header = HEADER.match(frame)
        assert header is not None, frame[:120]
        assert int(header["pri"]) == 10 * 8 + 5  # authpriv.notice
        assert header["version"] == b"1"
        assert (
            header["timestamp"]
            == record["occurred_at"].isoformat(timespec="milliseconds").replace("+00:00", "Z").encode()
        )
        assert header["hostname"] == b"imx-test-host"
        assert header["app"] == b"imx-audit"
        assert header["procid"].isdigit()
        assert header["msgid"] == event_id.encode()
        msg = header["msg"]
        assert msg.startswith(BOM)
        root = ET.fromstring(msg[len(BOM) :])
        assert root.tag == "AuditMessage"
        assert root.find("EventIdentification/EventID").get("csd-code") == event_id  # type: ignore[union-attr]


def test_a_connection_the_repository_closed_while_idle_is_not_written_into(pki: MutualTls, receiver: Receiver) -> None:
    """Repositories close idle connections. The next batch was written into the closed one: the send
    succeeded here, the peer answered with a reset, and the batch counted as forwarded was never received."""
    import time

    records = _records()
    receiver.close_after = 2
    forwarder = _forwarder(pki, receiver.port)
    try:
        forwarder.write(records[:2])
        receiver.wait_for(2)
        time.sleep(0.5)  # the repository has closed it by now
        forwarder.write(records[2:4])
        assert len(receiver.wait_for(4)) == 4
    finally:
        forwarder.close()
    assert len(receiver.client_subjects) == 2  # a second connection carried the second batch


def test_the_handler_forwards_what_it_stores_when_wired_as_a_sink(
    pki: MutualTls, receiver: Receiver, client: MongoClient, unique_name: str
) -> None:
    forwarder = forwarder_from_settings(
        f"tls://127.0.0.1:{receiver.port}", pki.server.ca_file, pki.client_cert_file, pki.client_key_file
    )
    assert forwarder is not None
    store = MongoAuditStore(client[unique_name]["audit_events"])
    store.ensure_indexes()
    handler = AuditHandler(store, TOPICS, clock=lambda: NOW, sinks=[forwarder])
    try:
        for message in journey(TOPICS, Instance()):
            handler(incoming(message))
        assert handler.flush() == 5
        assert len(receiver.wait_for(5)) == 5
    finally:
        forwarder.close()


def test_a_server_not_signed_by_the_configured_ca_is_refused_as_transient(pki: MutualTls, receiver: Receiver) -> None:
    forwarder = _forwarder(pki, receiver.port, ca=other_ca(pki.server.ca_file.parent / "other-ca.crt"))
    with pytest.raises(TransientError):
        forwarder.write(_records()[:1])
    assert receiver.frames == []


def test_an_unreachable_repository_fails_the_batch() -> None:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]  # closed again: nothing listens there
    forwarder = SyslogForwarder(SyslogTarget("127.0.0.1", port), ssl.create_default_context(), timeout_s=2)
    with pytest.raises(TransientError):
        forwarder.write(_records()[:1])


def test_only_tls_urls_are_accepted() -> None:
    assert parse_target("tls://arr.example.org") == SyslogTarget("arr.example.org", 6514)
    assert parse_target("tls://127.0.0.1:7000") == SyslogTarget("127.0.0.1", 7000)
    for url in ("udp://arr:514", "tcp://arr:601", "arr:6514"):
        with pytest.raises(ValueError):
            parse_target(url)
    assert forwarder_from_settings(None, None, None, None) is None
