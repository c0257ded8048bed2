"""The pieces both of the gateway's fetch paths share (services/gateway/fetch.py, plain_get.py): the
keep-alive pool (one connection per thread and key), its one retry of a reused connection the server
closed while idle, the request target, and the loop that writes, hashes and limits an answer's body.
The pool is exercised over real sockets to a tiny server on 127.0.0.1."""

from __future__ import annotations

import functools
import hashlib
import http.client
import socket
import socketserver
import threading
from collections.abc import Callable, Iterator
from io import BytesIO
from urllib.parse import urlsplit

import pytest

from services.gateway.fetch import FetchFailure, _network_errors, _raise_for, _stream, _target
from services.gateway.plain_get import KeepAlive, exchange, open_socket, receive_whole

REQUEST = b"GET /o HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

Address = tuple[str, int]


class Peer(socketserver.ThreadingTCPServer):
    """Reads one request per connection; answers it and closes (as an idle timeout would, without
    saying so) while `answers` lasts, else closes without answering."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, answers: int) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.answers = answers

    @property
    def address(self) -> Address:
        host, port = self.server_address[:2]
        return str(host), int(port)


class _Handler(socketserver.BaseRequestHandler):
    server: Peer

    def handle(self) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            piece = self.request.recv(4096)
            if not piece:
                return
            data += piece
        if self.server.answers > 0:
            self.server.answers -= 1
            self.request.sendall(ANSWER)


@pytest.fixture
def peer_factory() -> Iterator[Callable[[int], Peer]]:
    peers: list[Peer] = []

    def start(answers: int) -> Peer:
        peer = Peer(answers)
        threading.Thread(target=peer.serve_forever, args=(0.02,), daemon=True).start()
        peers.append(peer)
        return peer

    yield start
    for peer in peers:
        peer.shutdown()
        peer.server_close()


class Counted:
    """open_socket, counting the connections the pool asked for."""

    def __init__(self) -> None:
        self.opened: list[Address] = []

    def __call__(self, address: Address) -> socket.socket:
        self.opened.append(address)
        return open_socket(address, 5.0, 5.0)


def pool() -> tuple[KeepAlive[Address, socket.socket], Counted]:
    connect = Counted()
    return KeepAlive(connect, socket.socket.close), connect


def ask(sock: socket.socket) -> bytes:
    head, first = exchange(sock, REQUEST)
    assert head.length is not None
    return bytes(receive_whole(sock, first, head.length))


def test_a_thread_reuses_its_connection_and_another_thread_gets_its_own(
    peer_factory: Callable[[int], Peer],
) -> None:
    first, second = peer_factory(0), peer_factory(0)
    connections, connect = pool()
    try:
        sock, reused = connections.get(first.address)
        assert not reused
        assert connections.get(first.address) == (sock, True)
        other, reused = connections.get(second.address)
        assert other is not sock and not reused, "another server, another connection"
        theirs: list[tuple[socket.socket, bool]] = []
        thread = threading.Thread(target=lambda: theirs.append(connections.get(first.address)))
        thread.start()
        thread.join()
        assert theirs[0][0] is not sock and not theirs[0][1], "another thread, its own connection"
        assert connect.opened == [first.address, second.address, first.address]
    finally:
        connections.close_all()


def test_a_dropped_connection_is_closed_and_replaced(peer_factory: Callable[[int], Peer]) -> None:
    peer = peer_factory(0)
    connections, connect = pool()
    try:
        sock, _ = connections.get(peer.address)
        connections.drop(peer.address, sock)
        assert sock.fileno() == -1
        fresh, reused = connections.get(peer.address)
        assert fresh is not sock and not reused
        theirs: list[socket.socket] = []
        thread = threading.Thread(target=lambda: theirs.append(connections.get(peer.address)[0]))
        thread.start()
        thread.join()
        connections.drop(peer.address, theirs[0])
        assert connections.get(peer.address) == (fresh, True), "dropping another thread's keeps this one's"
        assert len(connect.opened) == 3
    finally:
        connections.close_all()


def test_close_all_closes_every_threads_connections(peer_factory: Callable[[int], Peer]) -> None:
    peer = peer_factory(0)
    connections, _ = pool()
    opened = [connections.get(peer.address)[0]]
    thread = threading.Thread(target=lambda: opened.append(connections.get(peer.address)[0]))
    thread.start()
    thread.join()
    connections.close_all()
    assert [sock.fileno() for sock in opened] == [-1, -1]


def test_a_reused_connection_the_server_closed_is_asked_once_more_on_a_new_one(
    peer_factory: Callable[[int], Peer],
) -> None:
    peer = peer_factory(2)
    connections, connect = pool()
    try:
        stale, body = connections.first_answer(peer.address, ask)
        assert body == b"ok"
        sock, body = connections.first_answer(peer.address, ask)  # the server closed `stale` meanwhile
        assert body == b"ok" and sock is not stale and stale.fileno() == -1
        assert len(connect.opened) == 2
    finally:
        connections.close_all()


def test_the_retry_happens_once(peer_factory: Callable[[int], Peer]) -> None:
    peer = peer_factory(1)  # the first connection's request is answered, no other
    connections, connect = pool()
    try:
        connections.first_answer(peer.address, ask)
        with pytest.raises(http.client.RemoteDisconnected):
            connections.first_answer(peer.address, ask)
        assert len(connect.opened) == 2, "the first connection, then one new one"
        assert not connections.get(peer.address)[1], "the failed connection was dropped"
    finally:
        connections.close_all()


def test_a_new_connection_that_fails_is_not_retried(peer_factory: Callable[[int], Peer]) -> None:
    peer = peer_factory(0)
    connections, connect = pool()
    try:
        with pytest.raises(http.client.RemoteDisconnected):
            connections.first_answer(peer.address, ask)
        assert len(connect.opened) == 1
    finally:
        connections.close_all()


def test_other_failures_of_a_reused_connection_are_not_retried(peer_factory: Callable[[int], Peer]) -> None:
    peer = peer_factory(2)
    connections, connect = pool()
    try:
        sock, _ = connections.first_answer(peer.address, ask)

        def malformed(_: socket.socket) -> bytes:
            raise http.client.BadStatusLine("not HTTP")

        with pytest.raises(http.client.BadStatusLine):
            connections.first_answer(peer.address, malformed)
        assert len(connect.opened) == 1 and sock.fileno() == -1, "not retried, dropped"
    finally:
        connections.close_all()


@pytest.mark.parametrize(
    ("url", "target"),
    [
        ("http://h:8046/dicomweb/studies/1/series/2/instances/3", "/dicomweb/studies/1/series/2/instances/3"),
        ("http://h/o?ref=1&x=%20y", "/o?ref=1&x=%20y"),
        ("http://h", "/"),
        ("http://h?ref=1", "/?ref=1"),
        ("http://h/o?", "/o"),
        ("https://user@h/o#part", "/o"),
    ],
)
def test_the_request_target_is_the_path_and_query(url: str, target: str) -> None:
    assert _target(urlsplit(url)) == target


def test_the_body_is_written_and_hashed_as_it_arrives() -> None:
    out = BytesIO()
    assert _stream(iter([b"ab", b"cd"]), "application/dicom", out, 4) == (hashlib.sha256(b"abcd").hexdigest(), 4)
    assert out.getvalue() == b"abcd"


def test_the_first_part_of_a_multipart_body_is_kept() -> None:
    stream = b"--b\r\nContent-Type: application/dicom\r\n\r\npayload\r\n--b--\r\n"
    out = BytesIO()
    pieces = iter([stream[:10], stream[10:]])
    assert _stream(pieces, 'multipart/related; boundary="b"', out, 7) == (hashlib.sha256(b"payload").hexdigest(), 7)
    assert out.getvalue() == b"payload"
    with pytest.raises(FetchFailure) as failure:
        _stream(iter([stream[:-10]]), "multipart/related; boundary=b", BytesIO(), 100)
    assert (failure.value.detail, failure.value.retryable) == ("truncated-multipart", True)


def test_a_body_longer_than_the_limit_is_refused_before_more_is_read() -> None:
    read: list[bytes] = []

    def pieces() -> Iterator[bytes]:
        for piece in (b"abc", b"def", b"ghi"):
            read.append(piece)
            yield piece

    with pytest.raises(FetchFailure) as failure:
        _stream(pieces(), "application/dicom", BytesIO(), 5)
    assert (failure.value.detail, failure.value.retryable) == ("size-mismatch", True)
    assert read == [b"abc", b"def"]


@pytest.mark.parametrize(
    ("error", "detail", "unavailable"),
    [
        (TimeoutError(), "fetch-timeout", False),
        # The answer began and broke off: attempts are spent (few of them), where before it was taken for a
        # server that is away and retried for ever, holding the partner's whole feed behind it.
        (ConnectionResetError(), "body-torn", False),
        (http.client.IncompleteRead(b"", 3), "body-torn", False),
    ],
)
def test_a_failed_read_is_classified_as_the_network_failure_it_is(
    error: Exception, detail: str, unavailable: bool
) -> None:
    def pieces() -> Iterator[bytes]:
        yield b"ab"
        raise error

    with pytest.raises(FetchFailure) as failure:
        _stream(pieces(), "application/dicom", BytesIO(), 10)
    assert (failure.value.detail, failure.value.retryable, failure.value.unavailable) == (detail, True, unavailable)


@pytest.mark.parametrize(
    ("error", "detail"), [(ConnectionRefusedError(), "source-unreachable"), (TimeoutError(), "fetch-timeout")]
)
def test_a_server_that_does_not_answer_at_all_is_waited_for(error: Exception, detail: str) -> None:
    # A timeout before any answer is the retrieval service away too (it serves every object alike): it
    # spent attempts and dead-lettered an instance every ~9 minutes of an outage.
    with pytest.raises(FetchFailure) as failure, _network_errors():
        raise error
    assert (failure.value.detail, failure.value.unavailable) == (detail, True)


@pytest.mark.parametrize("status", [502, 503, 504])
def test_a_proxy_saying_the_retrieval_service_is_away_is_waited_for(status: int) -> None:
    with pytest.raises(FetchFailure) as failure:
        _raise_for(status)
    assert (failure.value.detail, failure.value.retryable, failure.value.unavailable) == (f"http-{status}", True, True)


def test_a_failed_write_is_raised_as_it_is() -> None:
    class Full:
        def write(self, data: bytes, /) -> int:
            raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        _stream(iter([b"ab"]), "application/dicom", Full(), 10)


def test_open_socket_connects_with_the_timeout_for_reads(peer_factory: Callable[[int], Peer]) -> None:
    peer = peer_factory(0)
    sock = functools.partial(open_socket, connect_timeout_s=5.0, read_timeout_s=0.25)(peer.address)
    try:
        assert sock.gettimeout() == 0.25
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    finally:
        sock.close()
