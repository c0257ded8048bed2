"""A GET over plain HTTP/1.1 for the gateway's fetches (fetch.py): the request written as one prepared
piece, the answer's head read with the first piece of its body, and a body of known length received
into one buffer of that length. One keep-alive socket per thread and server, in the same pool
(`KeepAlive`) as fetch.py's http.client connections.

http.client builds each request header by header, parses each answer's head with the email package
and reads the body through a buffered reader: measured alone on 2026-12-03 (one process fetching a
527 KB object 1,000 times from delivery's partner app over one keep-alive connection, the fetching
process's CPU without the SHA-256, two rounds, load ~4), 0.19-0.28 ms per fetch that way, 0.07 ms
this way.

Only an answer framed by a Content-Length is read here; one that is not (chunked, or ended by closing
the connection) raises NotPlain before anything of its body is taken, its connection is dropped, and
fetch.py asks again by http.client, which reads any framing.
"""

from __future__ import annotations

import contextlib
import http.client
import math
import socket
import threading
import time
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

HEAD_PIECE = 65536
MAX_HEAD_BYTES = 65536

# How a kept-alive connection the server closed while it was idle fails on its first use again.
STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)

K = TypeVar("K", bound=Hashable)
C = TypeVar("C")
R = TypeVar("R")


class NotPlain(Exception):
    """The answer is not framed by a Content-Length: read it another way (its connection is dropped)."""


@dataclass(frozen=True)
class Head:
    status: int
    length: int | None  # Content-Length; None: not framed by one (or chunked)
    content_type: str
    keep_alive: bool


def parse_head(head: bytes) -> Head:
    """An answer's status line and headers (without the blank line); http.client.HTTPException (as
    http.client raises for a malformed answer) when it is not HTTP/1.x."""
    lines = head.split(b"\r\n")
    version, _, rest = lines[0].partition(b" ")
    code = rest[:3]
    if version not in (b"HTTP/1.1", b"HTTP/1.0") or len(code) != 3 or not code.isdigit():
        raise http.client.BadStatusLine("not an HTTP/1.x status line")
    length: int | None = None
    content_type = ""
    chunked = False
    connection = b""
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon:
            raise http.client.HTTPException("malformed header line")
        name, value = name.strip().lower(), value.strip()
        if name == b"content-length":
            if not value.isdigit() or (length is not None and length != int(value)):
                raise http.client.HTTPException("malformed Content-Length")
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = True  # any transfer coding: http.client's to read
        elif name == b"content-type":
            content_type = value.decode("latin-1")
        elif name == b"connection":
            connection = value.lower()
    keep_alive = b"close" not in connection if version == b"HTTP/1.1" else b"keep-alive" in connection
    return Head(int(code), None if chunked else length, content_type, keep_alive)


def request_bytes(target: str, host: str, headers: dict[str, str]) -> bytes:
    """The whole request, as http.client would send it (Host, Accept-Encoding: identity, then ours)."""
    lines = [f"GET {target} HTTP/1.1", f"Host: {host}", "Accept-Encoding: identity"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def exchange(sock: socket.socket, request: bytes, deadline: float = math.inf) -> tuple[Head, bytes]:
    """Send `request`; the answer's head, and what of its body came with it. http.client's
    RemoteDisconnected when the connection ends before any answer (a kept-alive connection the server
    closed meanwhile: the caller asks again on a new one); TimeoutError past `deadline` (time.monotonic),
    which the head's bytes coming one by one, each within the read timeout, no longer outlast."""
    sock.sendall(request)
    data = b""
    while (end := data.find(b"\r\n\r\n")) < 0:
        if len(data) > MAX_HEAD_BYTES:
            raise http.client.HTTPException("answer head too long")
        past_deadline(deadline)
        piece = sock.recv(HEAD_PIECE)
        if not piece:
            if data:
                raise http.client.IncompleteRead(data)
            raise http.client.RemoteDisconnected("the server closed the connection without an answer")
        data += piece
    return parse_head(data[:end]), data[end + 4 :]


def receive_whole(sock: socket.socket, first: bytes, length: int, deadline: float = math.inf) -> bytearray:
    """The body of `length` bytes, `first` its start: received into one buffer, no copy after; TimeoutError
    past `deadline` (time.monotonic)."""
    if len(first) > length:
        raise http.client.HTTPException("more bytes than the Content-Length")
    body = bytearray(length)
    view = memoryview(body)
    got = len(first)
    view[:got] = first
    while got < length:
        past_deadline(deadline)
        received = sock.recv_into(view[got:])
        if not received:
            raise http.client.IncompleteRead(b"", length - got)
        got += received
    return body


def past_deadline(deadline: float) -> None:
    """TimeoutError once `deadline` (time.monotonic) has passed."""
    if time.monotonic() > deadline:
        raise TimeoutError("the answer took longer than its size allows")


def receive_pieces(sock: socket.socket, first: bytes, length: int, piece: int) -> Iterator[bytes]:
    """The body of `length` bytes in pieces of at most `piece`, `first` its start."""
    if len(first) > length:
        raise http.client.HTTPException("more bytes than the Content-Length")
    if first:
        yield first
    left = length - len(first)
    while left:
        received = sock.recv(min(piece, left))
        if not received:
            raise http.client.IncompleteRead(b"", left)
        left -= len(received)
        yield received


def open_socket(address: tuple[str, int], connect_timeout_s: float, read_timeout_s: float) -> socket.socket:
    """A TCP connection to `address`, set up as http.client sets up its own."""
    sock = socket.create_connection(address, timeout=connect_timeout_s)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(read_timeout_s)
    except BaseException:
        sock.close()
        raise
    return sock


class KeepAlive(Generic[K, C]):
    """Keep-alive connections, one per thread and key, made by `connect(key)` and ended by `close`;
    `close_all` ends every one."""

    def __init__(self, connect: Callable[[K], C], close: Callable[[C], object]) -> None:
        self._connect, self._close = connect, close
        self._local = threading.local()
        self._lock = threading.Lock()
        self._open: set[C] = set()

    def get(self, key: K) -> tuple[C, bool]:
        """(connection, reused): one this thread opened before, else a new one."""
        mine: dict[K, C] | None = getattr(self._local, "connections", None)
        if mine is None:
            mine = self._local.connections = {}
        found = mine.get(key)
        if found is not None:
            return found, True
        connection = self._connect(key)
        mine[key] = connection
        with self._lock:
            self._open.add(connection)
        return connection, False

    def drop(self, key: K, connection: C) -> None:
        """Close a connection that cannot be used again (an error, an answer not read to its end)."""
        mine: dict[K, C] = getattr(self._local, "connections", {})
        if mine.get(key) is connection:
            del mine[key]
        with self._lock:
            self._open.discard(connection)
        self._close(connection)

    def close_all(self) -> None:
        with self._lock:
            connections, self._open = self._open, set()
        for connection in connections:
            with contextlib.suppress(Exception):
                self._close(connection)

    def first_answer(self, key: K, ask: Callable[[C], R]) -> tuple[C, R]:
        """(connection, `ask(connection)`) on this thread's connection for `key`. A reused connection
        that fails as one the server closed while idle does (STALE) is asked once more on a new one;
        a new one is not. A connection that failed is dropped."""
        connection, reused = self.get(key)
        try:
            try:
                return connection, ask(connection)
            except STALE:
                if not reused:
                    raise
            self.drop(key, connection)
            connection, _ = self.get(key)
            return connection, ask(connection)
        except BaseException:
            self.drop(key, connection)
            raise
