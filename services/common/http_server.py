"""uvicorn on a background thread, beside the loop that owns the main thread (and its signals).

One class for every service's HTTP surface (ingest's STOW-RS, audit's query API, delivery's DICOMweb):
- the socket is bound in the constructor, so port 0 yields a known port before anything starts and a
  port in use fails at once with OSError;
- `log_config=None`: uvicorn's records go through the service's PHI-safe JSON handler;
- no access log: request paths carry study UIDs; each service logs its own summary;
- `stop()` stops accepting and lets requests in flight finish, up to `grace_s`;
- an idle kept-alive connection is closed after `keep_alive_s` (a route bounds its own body reads);
- a request answered before its body was read (a refusal) keeps its connection while the body still
  arrives, read and dropped, up to `DRAIN_AFTER_ANSWER_S`: a client that sends its whole body before
  it reads the answer (Python's http.client, `requests`) is otherwise reset and never sees it;
- a request's headers must be complete within `header_timeout_s` of the connection opening (or of the
  previous response on a kept-alive connection), else the connection is closed without an answer:
  uvicorn and h11 wait for headers for ever, so a client that sends half a request and stops, or one
  header byte a second, would otherwise hold its connection open indefinitely;
- a request still running when the graceful shutdown runs out (an upload whose body stopped arriving,
  say) is answered 503 with Retry-After and closed if nothing was sent yet, or just closed, and the
  whole lot is logged as one count: uvicorn would log each cancelled request as an error with a traceback;
- a response may send a file's bytes as its body with the ASGI zero-copy send extension
  (`ZERO_COPY_SEND` in `scope["extensions"]`): the kernel copies them to the socket (`loop.sendfile`,
  os.sendfile; read and written by asyncio over TLS);
- `direct`: an answerer for the one request the server answers most, shown each plain GET on an idle
  connection and written there with the file's bytes by os.sendfile when it answers, before uvicorn's
  h11 and the ASGI app (services/common/http_direct.py; plain HTTP only);
- with `tls=TlsFiles(cert, key)` it serves HTTPS only; the files are read in the constructor, so a
  missing or mismatched pair fails there (OSError / ssl.SSLError), not on the server thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import unquote

import h11
import uvicorn
from fastapi import FastAPI
from fastapi.telemetry import TelemetryConfig
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import STATUS_PHRASES, H11Protocol, RequestResponseCycle

from services.common.http_direct import DirectAnswerer, FileAnswer, answer_prefix, plain_get, status_line
from services.common.listen_address import listening_socket

log = logging.getLogger(__name__)

DEFAULT_HEADER_TIMEOUT_S = 10.0
# The longest a request body is read and dropped after its request was answered (as nginx's lingering_time).
DRAIN_AFTER_ANSWER_S = 30.0
_STOPPING_BODY = b'{"detail":"the service is stopping; retry later"}'
# The ASGI "Zero Copy Send" extension: {"type": ZERO_COPY_SEND, "file": <binary file>, "offset": int,
# "count": int, "more_body": bool} after `http.response.start`, in place of an `http.response.body`. Once
# the send returns, the server has set the message's "whole": whether every byte was handed to the kernel
# (False when the client hung up first: ASGI sends to a gone client return as if they had gone out).
ZERO_COPY_SEND = "http.response.zerocopysend"
# A client that stops reading an answer written through the transport: closed after this long without
# taking a byte (its socket's buffer full; one that takes any, however slowly, is not stalled). Nothing
# bounded it: the connection, its descriptor and the answer's state were held for ever. (A file sent by
# sendfile is not covered: cancelling asyncio's sendfile left the transport unusable.)
WRITE_STALL_S = 60.0


# FastAPI's native OpenTelemetry (a span, metrics and exception logs for every request) is off in every
# imx app (`FastAPI(telemetry=FASTAPI_TELEMETRY_OFF)`): its spans carry `url.path` and `url.query`,
# which hold study and instance UIDs, and its logs an exception's message, so with an OTLP endpoint
# configured they would export identifiers from the inputs; and it cost ~13% of delivery's CPU in
# `make bench` (py-spy, 2026-12-02). Each service logs its own PHI-free summary of a request instead.
FASTAPI_TELEMETRY_OFF: TelemetryConfig = {"tracing": False, "metrics": False, "logs": False}


@dataclass(frozen=True)
class TlsFiles:
    """A PEM certificate (chain) and its private key."""

    cert_file: Path
    key_file: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.cert_file, self.key_file)
        return context

    @staticmethod
    def of(cert_file: Path | None, key_file: Path | None) -> TlsFiles | None:
        """From a service's settings: both or neither (one without the other is a configuration error)."""
        if cert_file is None and key_file is None:
            return None
        if cert_file is None or key_file is None:
            raise ValueError("TLS needs both a certificate file and a key file")
        return TlsFiles(cert_file, key_file)


def _no_delay(transport: asyncio.BaseTransport) -> None:
    """TCP_NODELAY on an accepted connection. asyncio sets it only on sockets whose `proto` is
    IPPROTO_TCP, and those accepted from `socket.create_server` (proto 0) are not: uvicorn writes a
    response's headers and body separately, so Nagle held the body until the client's delayed ACK,
    40 ms later. Every answer of every imx HTTP server took >= 44 ms (an empty 404 included)."""
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _cancel(timer: asyncio.TimerHandle | None) -> None:
    if timer is not None:
        timer.cancel()


def header_deadline_protocol(header_timeout_s: float, direct: DirectAnswerer | None = None) -> type[H11Protocol]:
    """uvicorn's h11 protocol, closing a connection whose request headers are not complete in time, and
    answering a plain GET that `direct` answers itself (services/common/http_direct.py)."""

    class HeaderDeadlineProtocol(H11Protocol):
        _header_deadline: asyncio.TimerHandle | None = None
        _direct_busy = False  # a direct answer's rest is being sent
        _direct_pending = b""  # what arrived meanwhile (a pipelined request), handled after it
        _close_after = False  # the server is shutting down: close once the direct answer is out
        _write_stall: asyncio.TimerHandle | None = None  # armed while the client reads nothing
        _unsent = 0  # the write buffer's size when the stall timer was armed

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            _no_delay(transport)
            super().connection_made(transport)
            self._arm_header_deadline()

        def data_received(self, data: bytes) -> None:
            if direct is not None:
                if self._direct_busy:
                    self._direct_pending += data
                    return
                if self._answer_directly(data):
                    return
            super().data_received(data)

        def _answer_directly(self, data: bytes) -> bool:
            conn = self.conn
            if (
                conn.their_state is not h11.IDLE
                or conn.our_state is not h11.IDLE
                or conn.trailing_data[0]
                or self.scheme != "http"
                or (self.cycle is not None and not self.cycle.response_complete)
            ):
                return False
            request = plain_get(data)
            if request is None or direct is None:
                return False
            raw_path, _, query_string = request.target.partition(b"?")
            scope = {
                "type": "http",
                "asgi": {"version": self.asgi_version, "spec_version": "2.3"},
                "http_version": "1.1",
                "server": self.server,
                "client": self.client,
                "scheme": self.scheme,
                "method": "GET",
                "root_path": self.root_path,
                "path": self.root_path + unquote(raw_path.decode("ascii")),
                "raw_path": self.root_path.encode("ascii") + raw_path,
                "query_string": query_string,
                "headers": request.headers,
            }
            try:
                answer = direct(scope)
            except Exception:  # left to the ASGI app, which meets it again and answers it
                log.debug("direct answer declined by an error", exc_info=True)
                return False
            if answer is None:
                return False
            self._unset_keepalive_if_required()
            self._disarm_header_deadline()
            self._send_direct(answer)
            return True

        def _send_direct(self, answer: FileAnswer) -> None:
            status = status_line(answer.status, STATUS_PHRASES[answer.status])
            transport = self.transport
            transport.write(answer_prefix(status, self.server_state.default_headers, answer))
            sent = 0
            if answer.count and not transport.is_closing() and transport.get_write_buffer_size() == 0:
                # The prefix is on the socket already: the file's bytes follow it directly.
                try:
                    socket_fd = transport.get_extra_info("socket").fileno()
                    sent = os.sendfile(socket_fd, answer.file.fileno(), answer.offset, answer.count) or -1
                    # (0 of a count: the file ended, shrunk since it was checked)
                except BlockingIOError:  # the socket's buffer is full: the rest when it drains
                    sent = 0
                except OSError:  # the client hung up
                    sent = -1
            if sent == answer.count:
                self._direct_finished(answer, True)
                return
            if sent < 0:
                self._direct_finished(answer, False)
                return
            self._direct_busy = True
            task = self.loop.create_task(self._send_rest(answer, sent))
            self.tasks.add(task)  # uvicorn's graceful shutdown waits for it
            task.add_done_callback(self.tasks.discard)

        async def _send_rest(self, answer: FileAnswer, sent: int) -> None:
            rest = answer.count - sent
            try:
                whole = await self.loop.sendfile(self.transport, answer.file, answer.offset + sent, rest) == rest
            except (OSError, RuntimeError):  # the client hung up (or the transport closed) meanwhile
                whole = False
            self._direct_busy = False
            self._direct_finished(answer, whole)

        def _direct_finished(self, answer: FileAnswer, whole: bool) -> None:
            try:
                answer.done(whole)
            except Exception:
                log.exception("direct answer's completion failed")
            if not whole or self._close_after:
                # Fewer bytes than the Content-Length said: the client must see a broken transfer.
                self.transport.close()
                return
            self.on_response_complete()
            pending, self._direct_pending = self._direct_pending, b""
            if pending and not self.transport.is_closing():
                self.data_received(pending)

        def shutdown(self) -> None:
            if self._direct_busy:
                self._close_after = True
                return
            super().shutdown()

        def send_400_response(self, msg: str) -> None:
            # h11 found the request malformed mid-way (a bad chunk, say); uvicorn answers 400 and closes.
            cycle = self.cycle
            if cycle is not None and not cycle.response_complete:
                # The request's app may be running: marked gone, its own answer is dropped quietly (ASGI's
                # disconnect) instead of failing in h11 and being logged as an error with a traceback.
                cycle.disconnected = True
                cycle.message_event.set()
            if self.conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
                # An answer begun or given (one given before the body was read, which was being drained): no
                # 400 can follow it (h11 refused to frame one, and asyncio logged a fatal protocol error with
                # a traceback), so the connection is just closed.
                self.transport.close()
                return
            super().send_400_response(msg)

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm_header_deadline()
            self._disarm_write_stall()
            super().connection_lost(exc)

        def pause_writing(self) -> None:
            super().pause_writing()
            self._arm_write_stall()

        def _arm_write_stall(self) -> None:
            self._disarm_write_stall()
            self._unsent = self.transport.get_write_buffer_size()
            self._write_stall = self.loop.call_later(WRITE_STALL_S, self._write_stalled)

        def resume_writing(self) -> None:
            self._disarm_write_stall()
            super().resume_writing()

        def _disarm_write_stall(self) -> None:
            _cancel(self._write_stall)
            self._write_stall = None

        def _write_stalled(self) -> None:
            self._write_stall = None
            if self.transport.get_write_buffer_size() < self._unsent:  # taken, slowly: a slow link, not a stall
                self._arm_write_stall()
                return
            log.info("connection closed: its client read nothing of the answer", extra={"seconds": WRITE_STALL_S})
            self.transport.abort()  # close() would wait for the buffer the client does not read

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if self.transport.is_closing():
                return
            if self.conn.their_state is h11.SEND_BODY:
                # Answered before its body was read (a refusal): h11 reads the rest and drops it, so a
                # client that sends its whole body before it reads still finds the answer (closed with
                # the body unread, the client was reset instead); not for longer than DRAIN_AFTER_ANSWER_S.
                self._disarm_header_deadline()
                self._header_deadline = self.loop.call_later(
                    DRAIN_AFTER_ANSWER_S, self._drain_deadline_passed, self.cycle
                )
                return
            self._arm_header_deadline()

        def _drain_deadline_passed(self, answered: RequestResponseCycle | None) -> None:
            self._header_deadline = None
            # Still that request (its body arriving, or drained and no request since): closed.
            if self.cycle is answered and not self.transport.is_closing():
                self.transport.close()

        def _arm_header_deadline(self) -> None:
            self._disarm_header_deadline()
            self._header_deadline = self.loop.call_later(header_timeout_s, self._header_deadline_passed)

        def _disarm_header_deadline(self) -> None:
            _cancel(self._header_deadline)
            self._header_deadline = None

        def _header_deadline_passed(self) -> None:
            self._header_deadline = None
            # IDLE: h11 has not seen a complete request line and headers since the deadline was armed.
            # Nothing is answered: there is no request to answer, and the client may be gone anyway.
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.close()

    return HeaderDeadlineProtocol


class _FileRange:
    """A body piece h11 passes through untouched (`send_with_data_passthrough` needs only its length)."""

    __slots__ = ("count", "file", "offset")

    def __init__(self, file: BinaryIO, offset: int, count: int) -> None:
        self.file, self.offset, self.count = file, offset, count

    def __len__(self) -> int:
        return self.count


async def _send_file(cycle: RequestResponseCycle, message: Message, send: Send) -> None:
    """A zero-copy send on uvicorn's h11 cycle: h11 frames `count` bytes (and checks them against the
    Content-Length), the kernel sends them from the file, and uvicorn's own send ends the message.
    Before, a 527 KB object was read into memory and written from there: a copy into the process, one
    into the socket, and on a partial send asyncio copied the rest twice more (a slice, its buffer)."""
    message["whole"] = False  # told back to the sender: whether every byte was handed to the kernel
    if cycle.flow.write_paused and not cycle.disconnected:
        await cycle.flow.drain()
    if cycle.disconnected:
        return
    if not cycle.response_started or cycle.response_complete:
        raise RuntimeError(f"unexpected ASGI message {ZERO_COPY_SEND!r}")
    count = int(message["count"])
    if cycle.scope["method"] != "HEAD" and count:
        piece = _FileRange(message["file"], int(message.get("offset", 0)), count)
        # h11 documents any object with a length as passthrough data (for sendfile), typed as bytes.
        framed = cycle.conn.send_with_data_passthrough(h11.Data(data=piece))  # type: ignore[arg-type]
        for item in framed or ():
            if not isinstance(item, _FileRange):
                cycle.transport.write(item)  # chunked framing
                continue
            try:
                sent = await asyncio.get_running_loop().sendfile(cycle.transport, item.file, item.offset, item.count)
            except (OSError, RuntimeError):  # the client hung up (or the transport closed) meanwhile
                sent = -1
            if sent != item.count:
                # Fewer bytes than h11 framed (the client is gone, or the file shrank): the connection is
                # closed so the client sees a broken transfer, never a short one that looks whole; the
                # yield lets uvicorn see the connection lost, so it logs no unfinished response.
                cycle.transport.close()
                await asyncio.sleep(0)
                return
    await send({"type": "http.response.body", "body": b"", "more_body": bool(message.get("more_body", False))})
    message["whole"] = not cycle.disconnected


class _CutOffAtShutdown:
    """ASGI wrapper: a request that uvicorn cancels at the end of its graceful shutdown is finished here."""

    def __init__(self, app: ASGIApp, exiting: threading.Event) -> None:
        self._app = app
        self._exiting = exiting
        self.cut_off = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        started = False
        cycle = getattr(send, "__self__", None)
        if isinstance(cycle, RequestResponseCycle):
            scope.setdefault("extensions", {})[ZERO_COPY_SEND] = {}

        async def tracked(message: Message) -> None:
            nonlocal started
            if message["type"] == ZERO_COPY_SEND and isinstance(cycle, RequestResponseCycle):
                await _send_file(cycle, message, send)
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self._app(scope, receive, tracked)
        except asyncio.CancelledError:
            if not self._exiting.is_set():
                raise
            self.cut_off += 1
            if not started:
                headers = [(b"content-type", b"application/json"), (b"retry-after", b"30"), (b"connection", b"close")]
                await send({"type": "http.response.start", "status": 503, "headers": headers})
                await send({"type": "http.response.body", "body": _STOPPING_BODY})
            # A response already under way is left incomplete: uvicorn closes the connection, so the client
            # sees a broken transfer, never a short one that looks whole.


class HttpServer:
    def __init__(
        self,
        app: FastAPI,
        host: str,
        port: int,
        grace_s: float = 10.0,
        name: str = "http",
        keep_alive_s: int = 5,
        header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S,
        tls: TlsFiles | None = None,
        direct: DirectAnswerer | None = None,
    ) -> None:
        ssl_options: dict[str, Any] = {}
        if tls is not None:
            context = tls.server_context()
            ssl_options = {"ssl_context_factory": lambda _config, _default: context}
        self._socket = listening_socket(host, port)
        self.host = host
        self.port: int = self._socket.getsockname()[1]
        self.scheme = "https" if tls is not None else "http"
        self._grace_s = max(1.0, grace_s)
        self._exiting = threading.Event()
        self._app = _CutOffAtShutdown(app, self._exiting)
        config = uvicorn.Config(
            self._app,
            http=header_deadline_protocol(header_timeout_s, None if tls is not None else direct),
            log_config=None,
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=max(1, int(grace_s)),
            timeout_keep_alive=keep_alive_s,
            **ssl_options,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, name=f"imx-{name}", daemon=True
        )
        self._name = name

    def start(self, timeout_s: float = 10.0) -> None:
        """Returns once uvicorn serves; raises OSError when it does not start in time."""
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            # uvicorn ends its thread (SystemExit) when it cannot start.
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise OSError(f"the {self._name} HTTP server did not start on port {self.port}")
            time.sleep(0.02)

    def stop(self) -> None:
        """Stop accepting; requests in flight finish (up to the graceful-shutdown time). Idempotent."""
        self._exiting.set()
        self._server.should_exit = True
        if self._thread.is_alive():
            # uvicorn's own grace, plus a little for its loop to notice should_exit and close.
            self._thread.join(self._grace_s + 5.0)
            if self._app.cut_off:
                log.warning("requests cut off at shutdown", extra={"service": self._name, "count": self._app.cut_off})
        self._socket.close()
