"""pynetdicom associations that wait for work instead of polling for it.

pynetdicom 3 runs two threads per association, and both poll: the DUL reactor sleeps 1 ms whenever a
pass found nothing and then asks its queues and the socket (`select` with no timeout) again, and the
association reactor sleeps 1 ms before every look at its DIMSE queue. An open association therefore
costs about 60 ms of CPU per second whether anything arrives or not (measured: two idle associations,
120 ms/s): a third of ingest's CPU per instance at the bench's rate, and nearly half of the partner
gateway's (issue 10: 47% of its on-CPU samples in the two loops).

`wait_for_work`, applied to an association before its DUL thread starts, changes when the two threads
look, not what pynetdicom does with what it sends and receives:

- the DUL reactor, with no event and nothing to send, blocks in `select` on the peer's socket and on a
  wake-up socket pair that every primitive queued for sending and every kill signals; it still wakes
  every `IDLE_WAIT_S` to check its timers (ARTIM). When that select finds the peer's socket readable,
  the PDU is read at once, as pynetdicom reads it after its own `select` (`socket.ready`), which is
  not asked again; the pair is drained only when it was signalled. Measured with ingest's SCP and
  `storescu` (100 CT): 8.1 selects and 14.3 recvs per instance instead of 14.1 and 20.2;
- the association reactor, with no DIMSE message queued, waits on an event set by every DIMSE message
  and every primitive the DUL hands up (a release or abort from the peer), by a pause request
  (`_reactor_checkpoint.clear()`, which a sender uses before each request), by kill and by the DUL
  thread ending; otherwise it wakes every `IDLE_WAIT_S` (the network timeout is seen up to that much
  later), or every `reactor_wait_s` its user gives (ingest's acceptors, whose association threads
  serve no C-STORE: 0.5 s).

With `turns` (the gateway's requestor associations), a sending thread can take the socket from the DUL
for a request and its response (`SocketTurn`): the DUL then neither reads nor writes the socket and
waits only for a signal, so a C-STORE that the sender writes and whose plain response it reads itself
(services/gateway/dimse_exchange.py) wakes neither of pynetdicom's threads.

Users: the gateway's requestor associations (`WaitingAE`) and ingest's acceptor associations
(`WaitingRequestHandler`), which also read the socket in pieces of up to `RECV_PIECE` bytes
(`read_in_large_pieces`): ingest receives 1 MiB PDUs, the gateway only small C-STORE responses.
"""

from __future__ import annotations

import queue
import select
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from typing import Any

from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.transport import AssociationSocket, RequestHandler

IDLE_WAIT_S = 0.05
# The DUL's sleep after a pass with nothing to do, which now follows a wait rather than replacing one:
# short, so that a primitive queued while the DUL waited is sent at once (pynetdicom's is 1 ms).
_AFTER_WAIT_S = 0.0001
_UNCONNECTED_DELAY_S = 0.001
RECV_PIECE = 256 * 1024


class _WakeUp:
    """A socket pair other threads write a byte to; the DUL selects on its read end with the peer's.

    Opened when the DUL thread starts and closed when it ends, so an association that never got that
    far holds no descriptors. Sockets, not an os.pipe, and `set` and `close` under one lock: a byte is
    never written to whatever file later reuses a closed descriptor's number.
    """

    def __init__(self) -> None:
        self._pair: tuple[socket.socket, socket.socket] | None = None
        self._lock = threading.Lock()

    def open(self) -> None:
        reader, writer = socket.socketpair()
        reader.setblocking(False)
        writer.setblocking(False)
        with self._lock:
            self._pair = (reader, writer)

    def set(self) -> None:
        with self._lock:
            if self._pair is not None:
                with suppress(OSError):  # full: already signalled
                    self._pair[1].send(b"\0")

    def wait(self, peer: socket.socket | None, timeout_s: float) -> bool:
        """Until the peer's socket (None: not watched) is readable, `set` is called or `timeout_s`
        passes (DUL thread only, which is also the one that closes the pair). True when the peer's
        socket is readable."""
        pair = self._pair
        if pair is None:
            return False
        # A socket closed meanwhile (closed socket objects raise ValueError or OSError): not the DUL's
        # to report here, it finds out when it reads. Anything raised in the DUL's loop would end the
        # association without telling a peer or a sender waiting for an answer.
        readable: list[Any] = []
        with suppress(OSError, ValueError, TypeError):
            watched = [pair[0]] if peer is None else [peer, pair[0]]
            readable, _, _ = select.select(watched, [], [], timeout_s)
        if pair[0] in readable:  # signalled: drained here (not tried after every PDU, to fail)
            with suppress(OSError):
                while pair[0].recv(4096):
                    pass
        return peer in readable

    def close(self) -> None:
        with self._lock:
            pair, self._pair = self._pair, None
        if pair is not None:
            for sock in pair:
                sock.close()


class _SignallingQueue(queue.Queue[Any]):
    def __init__(self, on_put: Callable[[], None]) -> None:
        super().__init__()
        self._on_put = on_put

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self._on_put()


class _SignallingCheckpoint(threading.Event):
    """The association's `_reactor_checkpoint`: clearing it (a pause request) wakes the reactor, which
    then reaches the checkpoint at once instead of after its wait."""

    def __init__(self, on_clear: Callable[[], None]) -> None:
        super().__init__()
        self.set()
        self._on_clear = on_clear

    def clear(self) -> None:
        super().clear()
        self._on_clear()


class SocketTurn:
    """The association's socket lent by the DUL thread to one sending thread for a request and its
    response (`wait_for_work(..., turns=True)`; `socket_turn`).

    While the turn is taken the DUL neither reads the socket nor writes what is queued for it (kept
    for later), and the association reactor does not look at the network timeout (the sender has its
    own); everything else goes on. Taking and giving back the turn set a flag under a lock the DUL
    holds while it reads a PDU or takes up a queued one until it is written, so the sender never
    shares the socket with a read or write in progress, and it costs no hand-over between threads:
    the DUL, which was perhaps waiting on the socket, wakes at most once when the response arrives,
    sees the turn taken and waits only for a signal (or its timers) until it is given back.
    """

    def __init__(self, dul: Any, wake: _WakeUp) -> None:
        self._dul = dul
        self._wake = wake
        self.lock = threading.Lock()
        self.taken = False
        self.turns = 0  # how many were taken: a readiness the DUL saw before one is stale

    def take(self) -> None:
        with self.lock:  # a PDU the DUL is reading or writing now is finished first
            self.taken = True
            self.turns += 1

    def give_back(self, received: bool = False, unread: bool = False) -> None:
        """`received`: the sender read a PDU (restarts the network timeout, as the DUL's reads do);
        `unread`: something waits on the socket for the DUL, which is woken to read it now. The DUL is
        also woken when primitives were queued for it meanwhile; otherwise it looks at the socket
        again after its wait (`IDLE_WAIT_S`)."""
        with self.lock:
            self.taken = False
        dul = self._dul
        if received:
            dul._idle_timer.restart()
        if unread or not dul.to_provider_queue.empty() or not dul.event_queue.empty():
            self._wake.set()

    def wake_dul(self) -> None:
        """Have the DUL look at the socket now, not after its wait."""
        self._wake.set()


def socket_turn(assoc: Association) -> SocketTurn | None:
    """The association's SocketTurn, None when it was not made to wait with turns."""
    turn = getattr(assoc, "_imx_socket_turn", None)
    return turn if isinstance(turn, SocketTurn) else None


def wait_for_work(assoc: Association, reactor_wait_s: float | None = None, turns: bool = False) -> None:
    """Make a new association, before its DUL starts, wait instead of poll (module doc). The association
    reactor wakes unsignalled every `reactor_wait_s` (default `IDLE_WAIT_S`) to look at the network
    timeout, which it then sees up to that much later. `turns`: a sending thread may take the socket
    from the DUL (SocketTurn)."""
    dul = assoc.dul
    wake = _WakeUp()
    work = threading.Event()  # the association reactor's
    turn = SocketTurn(dul, wake) if turns else None
    assoc._imx_socket_turn = turn  # type: ignore[attr-defined]

    def signal_both() -> None:
        wake.set()
        work.set()

    # Nothing is queued yet: the DUL has not started.
    dul.to_provider_queue = _SignallingQueue(wake.set)
    dul.to_user_queue = _SignallingQueue(work.set)
    assoc.dimse.msg_queue = _SignallingQueue(work.set)
    assoc._reactor_checkpoint = _SignallingCheckpoint(work.set)
    dul._run_loop_delay = _AFTER_WAIT_S

    transport_event = dul._is_transport_event
    kill_dul = dul.kill_dul

    def is_transport_event() -> bool:
        if turn is not None and turn.taken:  # a sender has the socket: wait for the turn or a kill
            if not dul._kill_thread:
                wake.wait(None, IDLE_WAIT_S)
            return False
        if dul.event_queue.empty() and dul.to_provider_queue.empty() and not dul._kill_thread:
            sock = dul.socket
            # Read once: another thread's close() sets it to None at any moment.
            raw = sock.socket if isinstance(sock, AssociationSocket) and sock._is_connected else None
            if raw is not None:
                turns = 0 if turn is None else turn.turns
                if wake.wait(raw, IDLE_WAIT_S) and dul.state_machine.current_state != "Sta13":
                    # What pynetdicom does once its own select (`socket.ready`) finds the socket
                    # readable, without asking select a second time for every PDU.
                    if turn is None:
                        dul._read_pdu_data()
                        return True
                    with turn.lock:
                        # Taken, or taken and given back since the select: the sender reads (or has
                        # read) what made the socket readable, and a blocking read would wait for more.
                        if turn.taken or turn.turns != turns:
                            return False
                        dul._read_pdu_data()
                        return True
            else:  # no connection to wait on (before connecting, after closing): pynetdicom's pace
                time.sleep(_UNCONNECTED_DELAY_S)
        if turn is None:
            return transport_event()
        with turn.lock:
            return False if turn.taken else transport_event()

    def kill() -> None:
        kill_dul()
        signal_both()

    dul._is_transport_event = is_transport_event  # type: ignore[method-assign]
    dul.kill_dul = kill  # type: ignore[method-assign]

    if turn is not None:
        lent = turn
        process_primitive = dul._process_recv_primitive
        do_action = dul.state_machine.do_action
        idle_timer_expired = dul.idle_timer_expired
        held = [False]  # the DUL thread's only: the lock is held from a primitive's event to its action

        def release_held() -> None:
            if held[0]:
                held[0] = False
                lent.lock.release()

        def process_primitive_in_turn() -> bool:
            # A primitive is kept queued while the sender has the socket; one taken up is written by the
            # action of the event it queued, which pynetdicom's loop runs next in the same pass: the
            # lock is held until that action is done, so a turn is never taken in between.
            release_held()
            lent.lock.acquire()
            try:
                if not lent.taken and process_primitive():
                    held[0] = True
                    return True
            except BaseException:
                lent.lock.release()
                raise
            lent.lock.release()
            return False

        def do_action_in_turn(event: str) -> None:
            try:
                do_action(event)
            finally:
                release_held()

        def idle_timer_expired_in_turn() -> bool:
            return not lent.taken and idle_timer_expired()

        dul._process_recv_primitive = process_primitive_in_turn  # type: ignore[method-assign]
        dul.state_machine.do_action = do_action_in_turn  # type: ignore[method-assign]
        dul.idle_timer_expired = idle_timer_expired_in_turn  # type: ignore[method-assign]

    run_dul = dul.run

    def run_dul_with_wake() -> None:
        wake.open()
        try:
            run_dul()
        finally:
            wake.close()
            work.set()  # the association reactor sees a dead DUL now, not at its next timeout

    dul.run = run_dul_with_wake  # type: ignore[method-assign]

    dimse = assoc.dimse
    get_msg = dimse.get_msg

    def get_msg_waiting(block: bool = False) -> Any:
        if block:  # a sender waiting for its response: pynetdicom's own wait
            return get_msg(True)
        # Several messages may have come in under one signal: wait only when none is left.
        if dimse.msg_queue.empty():
            work.wait(IDLE_WAIT_S if reactor_wait_s is None else reactor_wait_s)
        # Cleared before anything is looked at: a signal from now on is kept for the next wait.
        work.clear()
        return get_msg(False)

    dimse.get_msg = get_msg_waiting  # type: ignore[method-assign]

    kill_assoc = assoc.kill

    def kill_association() -> None:
        work.set()
        kill_assoc()

    assoc.kill = kill_association  # type: ignore[method-assign]


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


def set_receive_timeout(sock: socket.socket, seconds: float) -> None:
    """SO_RCVTIMEO (0: none), leaving the socket in blocking mode: a read waiting longer fails (EAGAIN)."""
    limit = struct.pack("@ll", int(seconds), int((seconds % 1) * 1_000_000))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, limit)


def receive_timeout(sock: socket.socket) -> float:
    seconds, micros = struct.unpack(
        "@ll", sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.calcsize("@ll"))
    )
    return seconds + micros / 1_000_000


class WaitingAE(AE):
    """pynetdicom's AE, each association it requests made to wait for work (`wait_for_work`), its
    socket lent to a sending thread on request (`socket_turn`)."""

    def _create_socket(self, assoc: Association, address: Any, tls_args: Any) -> AssociationSocket:
        sock = super()._create_socket(assoc, address, tls_args)
        wait_for_work(assoc, turns=True)
        connect = sock.connect

        def connect_with_receive_timeout(primitive: Any) -> None:
            """pynetdicom clears the socket's timeout once connected, and the timers are looked at
            between reads: a peer stopping part way through a PDU held the DUL's read, and the next
            request waiting for its turn, for ever. A receive timeout at the socket (SO_RCVTIMEO) keeps
            it blocking for the direct sends and peeks (pdu_writer, dimse_responses); a read timed out
            ends the association (Evt17)."""
            connect(primitive)
            if sock.socket is None or not assoc.network_timeout:
                return
            if isinstance(sock.socket, ssl.SSLSocket):  # its blocking read retries past SO_RCVTIMEO
                sock.socket.settimeout(assoc.network_timeout)
            else:
                set_receive_timeout(sock.socket, assoc.network_timeout)

        sock.connect = connect_with_receive_timeout  # type: ignore[method-assign]
        return sock


class WaitingRequestHandler(RequestHandler):
    """pynetdicom's request handler, each association it accepts made to wait (`wait_for_work`, its
    reactor waking unsignalled every `reactor_wait_s`) and its socket read in large pieces
    (`read_in_large_pieces`)."""

    reactor_wait_s: float | None = None

    def _create_association(self) -> Association:
        assoc = super()._create_association()
        wait_for_work(assoc, self.reactor_wait_s)
        # An accepted socket blocks without limit (pynetdicom times only the listening one), and the
        # timers are looked at between reads: a peer stopping part way through a PDU held its thread and
        # its association slot for ever. Timed out, the read ends the association (Evt17).
        self.request.settimeout(assoc.network_timeout)
        if isinstance(assoc.dul.socket, AssociationSocket):
            read_in_large_pieces(assoc.dul.socket)
        return assoc
