"""Forwarding of every audit record to an audit record repository: RFC 5424 syslog over TLS (RFC 5425).

Each record becomes one syslog message whose MSG is its DICOM AuditMessage (PS3.15 A.5.1, as
services/audit/exports.py renders it), the way IHE ATNA repositories take them: PRI facility 10
(security/authorization, "authpriv") severity 5 (notice), VERSION 1, TIMESTAMP the event's time, HOSTNAME
this host, APP-NAME `imx-audit`, PROCID this process, MSGID the DICOM EventID code (e.g. 110104), no
STRUCTURED-DATA, and the MSG as a BOM and UTF-8 (RFC 5424 §6.4). Frames are octet-counted,
`MSG-LEN SP SYSLOG-MSG` (RFC 5425 §4.3), over TLS 1.2 or later (RFC 9662) with the server's certificate
checked against the configured CA and optionally a client certificate (mutual TLS).

As a RecordSink (services/audit/consumer.py) it runs after the store: a connection or send failure is a
TransientError, so the batch is read again and nothing is lost, but a replayed batch is sent again
(at least once): a repository recognises a repeat by the `record_id` ParticipantObjectDetail.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

from services.audit.exports import DEFAULT_SITE, audit_message_xml
from services.audit.records import AuditRecord
from services.audit.standard_events import standard_event
from services.common.messages import TransientError

log = logging.getLogger(__name__)

FACILITY_AUTHPRIV = 10
SEVERITY_NOTICE = 5
PRI = FACILITY_AUTHPRIV * 8 + SEVERITY_NOTICE  # <85>
APP_NAME = "imx-audit"
DEFAULT_PORT = 6514  # RFC 5425 §4.1
BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class SyslogTarget:
    host: str
    port: int


def parse_target(url: str) -> SyslogTarget:
    """`tls://host[:port]` (port 6514 by default); nothing else is accepted: audit never goes in clear."""
    parts = urlsplit(url)
    if parts.scheme != "tls" or not parts.hostname:
        raise ValueError(f"audit syslog URL must be tls://host[:port] (got {url!r})")
    return SyslogTarget(parts.hostname, parts.port or DEFAULT_PORT)


def _header_token(value: str, limit: int) -> str:
    """PRINTUSASCII without spaces (RFC 5424 §6.2), or the NILVALUE."""
    token = "".join(c for c in value if 33 <= ord(c) <= 126)[:limit]
    return token or "-"


def _timestamp(moment: datetime) -> str:
    moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def syslog_message(record: AuditRecord, hostname: str, procid: str, site: str = DEFAULT_SITE) -> bytes:
    """One RFC 5424 message (without framing) whose MSG is the record's DICOM AuditMessage."""
    event = standard_event(record)
    header = " ".join(
        (
            f"<{PRI}>1",
            _timestamp(event.occurred_at),
            _header_token(hostname, 255),
            APP_NAME,
            _header_token(procid, 128),
            _header_token(event.event_id.code, 32),
            "-",
        )
    )
    return header.encode("ascii") + b" " + BOM + audit_message_xml(record, site).encode("utf-8")


def octet_counted(message: bytes) -> bytes:
    """RFC 5425 §4.3 framing: the message's length in octets, a space, the message."""
    return str(len(message)).encode("ascii") + b" " + message


def tls_context(ca_file: Path | None, cert_file: Path | None = None, key_file: Path | None = None) -> ssl.SSLContext:
    """Server verified against `ca_file` (the system's CAs when None); a client certificate for mutual TLS."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca_file) if ca_file else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert_file is not None:
        context.load_cert_chain(str(cert_file), str(key_file) if key_file else None)
    return context


def _still_open(sock: ssl.SSLSocket) -> bool:
    """False when the peer has closed (or reset) the connection. A repository sends nothing on it
    (RFC 5425 is one-way), so anything to read means it is closing: its close_notify, or end of file."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return False
    if not readable and not sock.pending():
        return True
    timeout = sock.gettimeout()
    try:
        sock.setblocking(False)
        try:
            return bool(sock.recv(1))  # data from a syslog receiver is unexpected; keep the connection then
        finally:
            sock.settimeout(timeout)
    except (ssl.SSLWantReadError, BlockingIOError):
        return True  # a TLS record not whole yet: nothing says it is closed
    except (OSError, ssl.SSLError):
        return False


class SyslogForwarder:
    """A RecordSink sending each record to one audit record repository over one kept-open TLS connection."""

    def __init__(
        self,
        target: SyslogTarget,
        context: ssl.SSLContext,
        hostname: str | None = None,
        site: str = DEFAULT_SITE,
        timeout_s: float = 10.0,
    ) -> None:
        self._target = target
        self._context = context
        self._hostname = hostname or socket.gethostname()
        self._procid = str(os.getpid())
        self._site = site
        self._timeout_s = timeout_s
        self._socket: ssl.SSLSocket | None = None

    def _connected(self) -> ssl.SSLSocket:
        if self._socket is not None and not _still_open(self._socket):
            # Closed by the repository while idle: a send on it would still succeed here, the peer answer
            # with a reset, and the batch be committed as forwarded though nothing received it.
            self.close()
        if self._socket is None:
            raw = socket.create_connection((self._target.host, self._target.port), timeout=self._timeout_s)
            try:
                self._socket = self._context.wrap_socket(raw, server_hostname=self._target.host)
            except BaseException:
                raw.close()
                raise
        return self._socket

    def write(self, records: Sequence[AuditRecord]) -> None:
        if not records:
            return
        payload = b"".join(octet_counted(syslog_message(r, self._hostname, self._procid, self._site)) for r in records)
        try:
            self._connected().sendall(payload)
        except (OSError, ssl.SSLError) as exc:
            self.close()
            log.warning(
                "audit syslog forwarding failed",
                extra={"where": f"{self._target.host}:{self._target.port}", "error": type(exc).__name__},
            )
            raise TransientError(f"audit record repository unreachable: {exc}") from exc

    def close(self) -> None:
        if self._socket is not None:
            try:
                self._socket.close()
            finally:
                self._socket = None


def forwarder_from_settings(
    url: str | None, ca_file: Path | None, cert_file: Path | None, key_file: Path | None
) -> SyslogForwarder | None:
    """The forwarder the settings ask for (IMX_AUDIT_SYSLOG_*), or None when no URL is set."""
    if not url:
        return None
    return SyslogForwarder(parse_target(url), tls_context(ca_file, cert_file, key_file))
