"""Fetching a delivered object: WADO-RS GET of `PartnerDelivery.retrieval_url` with the partner's key,
hashed as it arrives and kept in memory when it is at most IN_MEMORY_UP_TO (fetched.py), else streamed
into a temp file under the gateway's state folder, so an object of any size costs one buffer of
memory. The SHA-256 and size named by the delivery must match.

imx answers an instance request with `application/dicom`; a server that answers with
`multipart/related` (PS3.18 8.7.3 allows it for an instance) is read too: its first part is the file.

The requests go over the standard library's http.client, one keep-alive connection per thread (the
fetch-ahead pool's and the loop's) and server, with the TLS settings httpx would use
(`httpx.create_ssl_context`: SSL_CERT_FILE/SSL_CERT_DIR honoured). httpx's client spent about a sixth
of the gateway's on-CPU samples in `make bench` (py-spy, `--gil`) on each request's models, cookies, auth
and redirect handling. Measured alone on 2026-12-02 (one process fetching a 527 KB object from a local
FastAPI app over one keep-alive connection, CPU time of the fetching process, rounds of 400 alternating
between the two, load average 11-17 from other work): 0.83-1.23 ms per fetch here, 1.60-2.04 ms through
httpx's client, so the change saves ~0.8 ms per instance. A URL that the environment sends through a
proxy (HTTP_PROXY, HTTPS_PROXY, ALL_PROXY, NO_PROXY), and every fetch of a Fetcher given its own httpx
client, still go through httpx. Over plain HTTP the GET itself is plain_get.py's (a prepared request, a
head parsed by hand, a body of known length received into one buffer); an answer it does not read (no
Content-Length) is asked for again through http.client, which also serves HTTPS.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.client
import math
import os
import socket
import ssl
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol
from urllib.parse import SplitResult, urlsplit

import httpx

from services.gateway.fetched import IN_MEMORY_UP_TO, Fetched
from services.gateway.plain_get import (
    KeepAlive,
    NotPlain,
    exchange,
    open_socket,
    past_deadline,
    receive_pieces,
    receive_whole,
    request_bytes,
)
from services.gateway.scratch_files import new_scratch_file, remove_abandoned
from services.proto_gen.imx.v1 import events_pb2

ACCEPT = 'application/dicom, multipart/related; type="application/dicom"; transfer-syntax=*'
CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 60.0
# A whole fetch's time bound, on top of READ_TIMEOUT_S: an answer may be slow, not endless. Each read's
# timeout alone let a server sending a byte a minute (or a multipart answer with an endless tail) hold the
# gateway, and so the partner's feed, for ever.
SLOWEST_BYTES_PER_S = 64 * 1024
PIECE = 1024 * 1024


def fetch_deadline(size: int, now: float) -> float:
    """When a fetch of `size` bytes begun at `now` (time.monotonic) has taken too long."""
    return now + READ_TIMEOUT_S + size / SLOWEST_BYTES_PER_S


class FetchFailure(Exception):
    """Why an object could not be fetched. `retryable`: another attempt may succeed (5xx, a digest
    mismatch from a torn read); `unavailable`: the server could not be reached, so waiting costs no
    attempt; `refused`: the key was refused (401/403), which no retry of one instance can fix."""

    def __init__(self, detail: str, retryable: bool, unavailable: bool = False, refused: bool = False) -> None:
        super().__init__(detail)
        self.detail = detail
        self.retryable = retryable
        self.unavailable = unavailable
        self.refused = refused


class _Sink(Protocol):
    def write(self, data: bytes, /) -> object: ...


class _Held:
    """An answer kept in memory as the pieces it arrived in. An object of up to a PIECE arrives in one
    (`HTTPResponse.read` fills one bytes object from the socket), which is then the object itself: no
    copy of it is made after the socket's. A BytesIO copied each object into a buffer of its own.
    Measured 2026-12-02 (one process fetching a 527 KB object 2,000 times from a local imx HTTP server,
    its CPU per fetch, rounds in the order before, after, after, before, load 4.6-6.4): 0.74-0.77 ms
    with the BytesIO, 0.45-0.47 ms without; from a thread pool, as the fetch-ahead fetches, 1.02-1.05
    and 0.54-0.57 ms."""

    def __init__(self) -> None:
        self._pieces: list[bytes | bytearray] = []

    def write(self, data: bytes | bytearray) -> int:
        self._pieces.append(data)
        return len(data)

    def value(self) -> bytes | bytearray:
        return self._pieces[0] if len(self._pieces) == 1 else b"".join(self._pieces)


# What may come before the first part's body (a preamble, the delimiter, the part's headers): imx's
# own answers have ~100 bytes. Past this the boundary is not coming, and nothing more is held for it.
PART_HEAD_LIMIT = 64 * 1024


class _FirstPart:
    """Writes the body of the first part of a multipart/related stream (RFC 2046 5.1.1), chunk by
    chunk, holding back only as many bytes as the closing delimiter is long."""

    def __init__(self, boundary: bytes, out: _Sink, digest: hashlib._Hash) -> None:
        self._opening = b"--" + boundary
        self._closing = b"\r\n--" + boundary
        self._out, self._digest = out, digest
        self._buffer = b""
        self._in_body = False
        self.done = False
        self.size = 0

    def feed(self, chunk: bytes) -> None:
        if self.done:
            return
        self._buffer += chunk
        if not self._in_body:
            start = self._buffer.find(self._opening)
            end = self._buffer.find(b"\r\n\r\n", start) if start >= 0 else -1
            if end < 0:
                if len(self._buffer) > PART_HEAD_LIMIT:  # a wrong boundary: buffered to the end before
                    raise FetchFailure("multipart-unreadable", retryable=True)
                return
            self._buffer = self._buffer[end + 4 :]
            self._in_body = True
        cut = self._buffer.find(self._closing)
        if cut >= 0:
            self._write(self._buffer[:cut])
            self._buffer, self.done = b"", True
            return
        keep = len(self._closing) - 1
        if len(self._buffer) > keep:
            self._write(self._buffer[:-keep])
            self._buffer = self._buffer[-keep:]

    def _write(self, data: bytes) -> None:
        self._out.write(data)
        self._digest.update(data)
        self.size += len(data)


def _boundary(content_type: str) -> bytes | None:
    for parameter in content_type.split(";")[1:]:
        name, _, value = parameter.strip().partition("=")
        if name.strip().lower() == "boundary":
            return value.strip().strip('"').encode()
    return None


class Fetcher:
    def __init__(self, dicomweb_key: str, incoming: Path, client: httpx.Client | None = None) -> None:
        self._headers = {"Authorization": f"Bearer {dicomweb_key}", "Accept": ACCEPT}
        self._incoming = incoming
        self._client = client  # given: every fetch goes through it
        self._proxied_client: httpx.Client | None = None
        self._lock = threading.Lock()
        self._proxies = urllib.request.getproxies_environment()
        self._ssl_context: ssl.SSLContext | None = None  # made when first needed
        # By (scheme, host, port) through http.client; by (host, port) for plain_get.py's GET.
        self._connections: KeepAlive[tuple[str, str, int | None], http.client.HTTPConnection]
        self._connections = KeepAlive(self._connect, http.client.HTTPConnection.close)
        self._plain: KeepAlive[tuple[str, int], socket.socket] = KeepAlive(
            functools.partial(open_socket, connect_timeout_s=CONNECT_TIMEOUT_S, read_timeout_s=READ_TIMEOUT_S),
            socket.socket.close,
        )
        incoming.mkdir(parents=True, exist_ok=True)
        remove_abandoned(incoming)  # a killed gateway's, which nothing else would ever delete

    def fetch(self, delivery: events_pb2.PartnerDelivery) -> Fetched:
        """The verified object, in memory up to IN_MEMORY_UP_TO, else in a temp file; the caller
        `discard`s it. FetchFailure otherwise."""
        if not delivery.retrieval_url.startswith(("http://", "https://")):
            raise FetchFailure("no-retrieval-url", retryable=False)
        if delivery.blob.size <= IN_MEMORY_UP_TO:
            held = _Held()
            digest, size = self._download(delivery, held)
            _verify(delivery, digest, size)
            return Fetched(data=held.value(), scratch=self._incoming)
        fd, path = new_scratch_file(self._incoming)
        try:
            with os.fdopen(fd, "wb") as out:
                digest, size = self._download(delivery, out)
            _verify(delivery, digest, size)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return Fetched.in_file(path)

    def _download(self, delivery: events_pb2.PartnerDelivery, out: _Sink) -> tuple[str, int]:
        url = urlsplit(delivery.retrieval_url)
        deadline = fetch_deadline(delivery.blob.size, time.monotonic())
        client = self._client or (self._httpx_client() if self._proxied(url) else None)
        if client is not None:
            return _download_with(client, self._headers, delivery, out, deadline)
        if url.scheme == "http":
            try:
                return self._download_plain(url, delivery.blob.size, out, deadline)
            except NotPlain:
                pass  # not framed by a Content-Length: asked again, through http.client
        return self._download_direct(url, delivery.blob.size, out, deadline)

    def _download_plain(self, url: SplitResult, limit: int, out: _Sink, deadline: float) -> tuple[str, int]:
        key = (url.hostname or "", url.port or 80)
        request = request_bytes(_target(url), url.netloc.rpartition("@")[2], self._headers)
        with _network_errors():
            sock, (head, first) = self._plain.first_answer(key, lambda sock: exchange(sock, request, deadline))
        try:
            _raise_for(head.status)
            if head.length is None:
                raise NotPlain()
            multipart = head.content_type.lower().startswith("multipart/")
            if isinstance(out, _Held) and not multipart and head.length == limit:
                with _network_errors(in_body=True):
                    body = receive_whole(sock, first, head.length, deadline)
                out.write(body)
                digest, size = hashlib.sha256(body).hexdigest(), len(body)
            else:
                pieces = receive_pieces(sock, first, head.length, PIECE)
                digest, size = _stream(pieces, head.content_type, out, limit, deadline)
        except BaseException:
            self._plain.drop(key, sock)  # an answer not read to its end
            raise
        if multipart or not head.keep_alive:  # a multipart answer is read up to its first part's end
            self._plain.drop(key, sock)
        return digest, size

    def _proxied(self, url: SplitResult) -> bool:
        if not (self._proxies.get(url.scheme) or self._proxies.get("all")):
            return False
        return not urllib.request.proxy_bypass(url.hostname or "")

    def _httpx_client(self) -> httpx.Client:
        with self._lock:
            if self._proxied_client is None:
                self._proxied_client = httpx.Client(timeout=httpx.Timeout(READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S))
            return self._proxied_client

    def _download_direct(self, url: SplitResult, limit: int, out: _Sink, deadline: float) -> tuple[str, int]:
        key = (url.scheme, url.hostname or "", url.port)
        target = _target(url)
        with _network_errors():
            connection, response = self._connections.first_answer(
                key, lambda c: _get(c, target, self._headers, deadline)
            )
        try:
            _raise_for(response.status)
            # read1: what has arrived, so the deadline is looked at as the answer comes (read fills the piece)
            pieces = iter(functools.partial(response.read1, PIECE), b"")
            content_type = response.getheader("content-type", "")
            digest, size = _stream(pieces, content_type, out, limit, deadline)
        except BaseException:
            self._connections.drop(key, connection)  # an answer not read to its end
            raise
        if response.will_close or _is_multipart(content_type):  # read up to its first part's end
            self._connections.drop(key, connection)
        else:
            # read1 does not end a response whose Content-Length it used up (read does): left open, the
            # kept-alive connection's next request failed (ResponseNotReady), every second fetch over https.
            response.read()
        return digest, size

    def _connect(self, key: tuple[str, str, int | None]) -> http.client.HTTPConnection:
        scheme, host, port = key
        connection: http.client.HTTPConnection
        if scheme == "https":
            if self._ssl_context is None:
                self._ssl_context = httpx.create_ssl_context()
            connection = http.client.HTTPSConnection(host, port, timeout=CONNECT_TIMEOUT_S, context=self._ssl_context)
        else:
            connection = http.client.HTTPConnection(host, port, timeout=CONNECT_TIMEOUT_S)
        try:
            connection.connect()
            assert connection.sock is not None
            connection.sock.settimeout(READ_TIMEOUT_S)
        except BaseException:
            connection.close()
            raise
        return connection

    def close(self) -> None:
        self._connections.close_all()
        self._plain.close_all()
        for client in (self._client, self._proxied_client):
            if client is not None:
                with contextlib.suppress(Exception):
                    client.close()


class _Answer:
    """The body of an answer as it arrives: written and hashed, the first part of a multipart one only;
    never more than the delivery's size."""

    def __init__(self, out: _Sink, digest: hashlib._Hash, content_type: str) -> None:
        self._out, self._digest = out, digest
        boundary = _boundary(content_type) if _is_multipart(content_type) else None
        self._part = _FirstPart(boundary, out, digest) if boundary else None
        self.size = 0

    @property
    def has_object(self) -> bool:
        """A multipart answer's first part has ended: what follows it is not read (it may never end)."""
        return self._part is not None and self._part.done

    def feed(self, chunk: bytes, limit: int) -> None:
        if self._part is not None:
            self._part.feed(chunk)
            self.size = self._part.size
        else:
            self._out.write(chunk)
            self._digest.update(chunk)
            self.size += len(chunk)
        if self.size > limit:  # never let a wrong answer fill the disk
            raise FetchFailure("size-mismatch", retryable=True)

    def finish(self) -> None:
        if self._part is not None and not self._part.done:
            raise FetchFailure("truncated-multipart", retryable=True)


def _is_multipart(content_type: str) -> bool:
    return content_type.lower().startswith("multipart/")


def _target(url: SplitResult) -> str:
    """The request target (RFC 9112 3.2.1, origin-form): the path, "/" when empty, and the query."""
    return (url.path or "/") + (f"?{url.query}" if url.query else "")


def _get(
    connection: http.client.HTTPConnection, target: str, headers: dict[str, str], deadline: float = math.inf
) -> http.client.HTTPResponse:
    connection.request("GET", target, headers=headers)
    with _cut_at(connection.sock, deadline):
        return connection.getresponse()


@contextlib.contextmanager
def _cut_at(sock: socket.socket | None, deadline: float) -> Iterator[None]:
    """The connection shut at `deadline` (time.monotonic), TimeoutError then: http.client reads an answer's
    head a line at a time, each read within the read timeout, and nothing else bounds them all (a head
    coming a byte at a time held the gateway)."""
    if sock is None or deadline == math.inf:
        yield
        return
    fired = threading.Event()

    def cut() -> None:
        fired.set()
        with contextlib.suppress(OSError):
            # The plain socket's own shutdown, under TLS too: SSLSocket.shutdown would drop its TLS state
            # while another thread reads through it. The read then ends with an error.
            socket.socket.shutdown(sock, socket.SHUT_RDWR)

    timer = threading.Timer(max(0.0, deadline - time.monotonic()), cut)
    timer.daemon = True
    timer.start()
    try:
        yield
    except (OSError, http.client.HTTPException):
        if fired.is_set():
            raise TimeoutError("the answer's head took longer than the fetch may") from None
        raise
    else:
        if fired.is_set():  # http.client took the head cut short for a whole one
            raise TimeoutError("the answer's head took longer than the fetch may")
    finally:
        timer.cancel()


def _stream(
    pieces: Iterator[bytes], content_type: str, out: _Sink, limit: int, deadline: float = math.inf
) -> tuple[str, int]:
    """An answer's body as it arrives, an empty piece its end: (SHA-256, size) of what `_Answer` wrote."""
    digest = hashlib.sha256()
    answer = _Answer(out, digest, content_type)
    while not answer.has_object:
        with _network_errors(in_body=True):
            if answer.size < limit:  # the object whole: its end is read whatever the time
                past_deadline(deadline)
            piece = next(pieces, b"")
        if not piece:
            break
        answer.feed(piece, limit)  # a failed write is the gateway's disk, raised as it is
    answer.finish()
    return digest.hexdigest(), answer.size


BODY_TORN = "body-torn"  # the answer began and broke off: few attempts (worker.FEW_ATTEMPTS), not waited for


@contextlib.contextmanager
def _network_errors(in_body: bool = False) -> Iterator[None]:
    """What went wrong talking to the server, as httpx's TimeoutException and TransportError were. Before
    an answer, the server is away (waited for, no attempt spent); within its body (`in_body`), the server
    answered and the transfer broke: an object whose answer always breaks off spends attempts and is
    dead-lettered, where it held the partner's whole feed, retried every 30 s for ever."""
    try:
        yield
    except (OSError, http.client.HTTPException) as error:  # TimeoutError is an OSError
        raise _network_failure(error, in_body) from None


def _network_failure(error: BaseException, in_body: bool) -> FetchFailure:
    """No answer at all, a timeout included, is the retrieval service away (it serves every object
    alike, so the object is not the cause): waited for, no attempt spent. An answer that stalled or
    broke off spends attempts (few when it broke off: worker.FEW_ATTEMPTS)."""
    timed_out = isinstance(error, (TimeoutError, httpx.TimeoutException))
    if in_body:
        return FetchFailure("fetch-timeout" if timed_out else BODY_TORN, retryable=True)
    return FetchFailure("fetch-timeout" if timed_out else "source-unreachable", retryable=True, unavailable=True)


def _download_with(
    client: httpx.Client, headers: dict[str, str], delivery: events_pb2.PartnerDelivery, out: _Sink, deadline: float
) -> tuple[str, int]:
    digest = hashlib.sha256()
    answered = False
    # Identity: the bytes are verified as they come; httpx would decode a body said to be compressed.
    headers = {**headers, "Accept-Encoding": "identity"}
    try:
        with client.stream("GET", delivery.retrieval_url, headers=headers) as response:
            answered = True
            _raise_for(response.status_code)
            answer = _Answer(out, digest, response.headers.get("content-type", ""))
            for chunk in response.iter_bytes(PIECE):
                answer.feed(chunk, delivery.blob.size)
                if answer.has_object:
                    break
                if answer.size < delivery.blob.size:  # the object whole: its end is read whatever the time
                    past_deadline(deadline)
            answer.finish()
    except (httpx.TransportError, TimeoutError) as error:  # its timeouts included
        raise _network_failure(error, in_body=answered) from None
    except httpx.DecodingError:  # a body said to be compressed that is not
        raise FetchFailure(BODY_TORN, retryable=True) from None
    return digest.hexdigest(), answer.size


def _verify(delivery: events_pb2.PartnerDelivery, digest: str, size: int) -> None:
    if size != delivery.blob.size:
        raise FetchFailure("size-mismatch", retryable=True)
    if digest != delivery.blob.sha256:
        raise FetchFailure("sha256-mismatch", retryable=True)


def _raise_for(status: int) -> None:
    if status == 200:
        return
    if status in (401, 403):
        raise FetchFailure(f"http-{status}", retryable=False, refused=True)
    if status in (404, 410):
        raise FetchFailure(f"http-{status}", retryable=False)
    if status in (502, 503, 504) or 300 <= status < 400:
        # The service, or a proxy in front of it, saying it is away; or sending every fetch elsewhere (an
        # http URL moved to https), which is its configuration, not this object: dead-lettering the whole
        # feed as fast as it is read fixes nothing. A redirect is not followed: the key stays with imx.
        raise FetchFailure(f"http-{status}", retryable=True, unavailable=True)
    raise FetchFailure(f"http-{status}", retryable=status >= 500 or status in (408, 429))
