"""Associations that wait for work instead of polling for it.

pynetdicom 3 runs two threads per association, and both poll: the DUL reactor sleeps 1 ms whenever a
pass found nothing to do and then asks the socket (`select` with no timeout) and its queues again, and
the association reactor sleeps 1 ms before every look at its message queue. An open association
therefore costs about 60 ms of CPU per second whether anything arrives or not (measured: two idle
associations, 120 ms/s), which was a third of ingest's CPU per instance at the bench's rate, where each
association spends most of its time waiting for the sender or for the group commit.

Here, per association and without changing what pynetdicom does with what it receives:

- the DUL reactor, when it has no event and nothing to send, blocks in `select` on the peer's socket
  and on a wake-up socket pair, which every primitive queued for sending and every kill request
  signals; it still wakes every `IDLE_WAIT_S` to check its timers (ARTIM);
- the association reactor waits on its DIMSE message queue for up to `IDLE_WAIT_S` instead of taking
  what is there and sleeping; a release or abort from the peer, a dead DUL thread or the network
  timeout are seen at most `IDLE_WAIT_S` later (they were seen within 1 ms);
- the socket is read in pieces of up to `RECV_PIECE` bytes, not pynetdicom's 4 KiB, so a 1 MiB PDU is
  read in a few calls instead of 256.
"""

from __future__ import annotations

import queue
import select
import socket
from collections.abc import Callable
from contextlib import suppress
from typing import Any

from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider
from pynetdicom.transport import AssociationSocket, RequestHandler

IDLE_WAIT_S = 0.05
# The DUL's sleep after a pass with nothing to do, which now follows a wait rather than replacing one:
# short, so that a response queued while the DUL waited is sent at once (pynetdicom's is 1 ms).
_AFTER_WAIT_S = 0.0001
RECV_PIECE = 256 * 1024


class _WakeUp:
    """A socket pair another thread writes one byte to; the waiting thread selects on its read end.

    Sockets, not an os.pipe: a closed socket object refuses to send (OSError) instead of writing to
    whatever file later reuses the descriptor number.
    """

    def __init__(self) -> None:
        self._reader, self._writer = socket.socketpair()
        self._reader.setblocking(False)
        self._writer.setblocking(False)

    def set(self) -> None:
        with suppress(OSError):  # full (already signalled) or closed (the association is over)
            self._writer.send(b"\0")

    def wait(self, peer: socket.socket | None, timeout_s: float) -> None:
        """Until the peer's socket is readable, `set` is called or `timeout_s` passes."""
        watched = [self._reader] if peer is None else [peer, self._reader]
        with suppress(OSError, ValueError):  # a socket closed meanwhile: let pynetdicom find out
            select.select(watched, [], [], timeout_s)
        with suppress(OSError):
            while self._reader.recv(4096):
                pass

    def close(self) -> None:
        self._reader.close()
        self._writer.close()


class _SignallingQueue(queue.Queue[Any]):
    def __init__(self, on_put: Callable[[], None]) -> None:
        super().__init__()
        self._on_put = on_put

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self._on_put()


def wait_for_work(assoc: Association) -> None:
    """Make a new, not yet started acceptor association wait instead of poll (see the module doc)."""
    dul: DULServiceProvider = assoc.dul
    wake = _WakeUp()
    # Nothing has been queued yet: the association has not started.
    dul.to_provider_queue = _SignallingQueue(wake.set)
    dul._run_loop_delay = _AFTER_WAIT_S
    transport_event = dul._is_transport_event
    kill_dul = dul.kill_dul

    def is_transport_event() -> bool:
        sock = dul.socket
        if (
            isinstance(sock, AssociationSocket)
            and sock.socket is not None
            and getattr(sock, "_is_connected", False)
            and dul.event_queue.empty()
            and dul.to_provider_queue.empty()
            and not dul._kill_thread
        ):
            wake.wait(sock.socket, IDLE_WAIT_S)
        return transport_event()

    def kill() -> None:
        kill_dul()
        wake.set()

    dul._is_transport_event = is_transport_event  # type: ignore[method-assign]
    dul.kill_dul = kill  # type: ignore[method-assign]

    dimse = assoc.dimse
    get_msg = dimse.get_msg

    def get_msg_waiting(block: bool = False) -> Any:
        if block:
            return get_msg(True)
        try:
            return dimse.msg_queue.get(timeout=IDLE_WAIT_S)
        except queue.Empty:
            return None, None

    dimse.get_msg = get_msg_waiting  # type: ignore[method-assign]
    _closes_when_done(assoc, wake)


def _closes_when_done(assoc: Association, wake: _WakeUp) -> None:
    """Close the wake-up pair when the association's thread ends (the DUL's has ended by then)."""
    run = assoc.run

    def run_then_close() -> None:
        try:
            run()
        finally:
            if not assoc.dul.is_alive():
                wake.close()

    assoc.run = run_then_close  # type: ignore[method-assign]


def read_in_large_pieces(sock: AssociationSocket) -> None:
    """pynetdicom's `AssociationSocket.recv`, reading up to RECV_PIECE bytes per call, not 4 KiB.

    Same contract: blocks until `nr_bytes` are read, returns what came before the peer closed, lets
    socket errors and timeouts through. Never allocates more than arrived plus one piece, however
    long a PDU claims to be.
    """

    def recv(nr_bytes: int) -> bytearray:
        raw = sock.socket
        assert raw is not None  # as in pynetdicom, which would fail on None too
        stream = bytearray()
        while len(stream) < nr_bytes:
            piece = raw.recv(min(nr_bytes - len(stream), RECV_PIECE))
            if not piece:
                break
            stream += piece
        return stream

    sock.recv = recv  # type: ignore[method-assign]


class WaitingRequestHandler(RequestHandler):
    """pynetdicom's request handler, with each new association made to wait (`wait_for_work`)."""

    def _create_association(self) -> Association:
        assoc = super()._create_association()
        wait_for_work(assoc)
        if isinstance(assoc.dul.socket, AssociationSocket):
            read_in_large_pieces(assoc.dul.socket)
        return assoc
