"""P-DATA-TF PDUs written to an association's socket by the sending thread (PS3.8 9.3.5), gathered:
a header and a slice of the data set per PDU, one `sendmsg` for a MiB of the data set, no copy of it.

pynetdicom sends a P-DATA by putting the primitive on its DUL thread's queue; the DUL thread wakes,
runs its state machine, encodes the PDU into a new bytes object and writes it, re-slicing (copying)
what is left after every partial send. For a 527 KB instance in 128 KiB PDUs that is five hand-overs
between threads and about three copies of the data set, per instance (issue 10, the gateway's CPU).
"""

from __future__ import annotations

import select
import socket
import struct
from collections.abc import Iterator
from io import BufferedReader, BytesIO


class SendStalled(Exception):
    """Nothing left for the peer for the association's network timeout: it stopped reading."""


DIRECT_BLOCK = 1024 * 1024  # data set bytes read and written per `sendmsg` (whole fragments, at least one)
IOV_LIMIT = 512  # buffers per sendmsg call, under Linux's IOV_MAX (1024)
P_DATA_TF = 0x04  # PS3.8 9.3.5 PDU type


def pdata_header(context_id: int, control: int, fragment_length: int) -> bytes:
    """The P-DATA-TF PDU header and its one PDV item's header before a fragment (PS3.8 9.3.5, 9.3.5.1):
    PDU type, reserved, PDU length; item length, presentation context id, message control header."""
    return struct.pack(">BBLLBB", P_DATA_TF, 0, 6 + fragment_length, 2 + fragment_length, context_id, control)


def pdu_buffers(context_id: int, command: bytes, data: memoryview, piece: int, last: bool) -> list[memoryview]:
    """The PDUs of `command` (b"" for none) and `data`, as headers and slices: the same bytes as
    pynetdicom's encoding of `message_pdus` (one fragment of at most `piece` bytes per P-DATA-TF).
    `last`: the data set ends with `data`, so its last fragment says so."""
    buffers: list[memoryview] = []
    for start in range(0, len(command), piece):
        control = 0x03 if start + piece >= len(command) else 0x01
        part = command[start : start + piece]
        buffers += (memoryview(pdata_header(context_id, control, len(part))), memoryview(part))
    for start in range(0, max(len(data), 1), piece):
        fragment = data[start : start + piece]
        control = 0x02 if last and start + piece >= len(data) else 0x00
        buffers += (memoryview(pdata_header(context_id, control, len(fragment))), fragment)
    return buffers


def send_all(sock: socket.socket, buffers: list[memoryview], stall_s: float) -> None:
    """Write every buffer in order, gathered (`sendmsg`), without blocking the caller for more than
    `stall_s` without progress: SendStalled then. The socket stays as pynetdicom set it (blocking):
    the calls are MSG_DONTWAIT, and waiting is for writability."""
    start = 0
    while start < len(buffers):
        try:
            sent = sock.sendmsg(buffers[start : start + IOV_LIMIT], (), socket.MSG_DONTWAIT)
        except BlockingIOError:
            try:
                _, writable, _ = select.select([], [sock], [], stall_s)
            except ValueError:  # the DUL closed the socket meanwhile (the peer aborted)
                raise ConnectionError("the association's socket was closed during the send") from None
            if not writable:
                raise SendStalled from None
            continue
        while sent:
            head = buffers[start]
            if sent >= len(head):
                sent -= len(head)
                start += 1
            else:
                buffers[start] = head[sent:]
                sent = 0
        while start < len(buffers) and not len(buffers[start]):
            start += 1


def send_direct(
    sock: socket.socket,
    command: bytes,
    data_set: BufferedReader | BytesIO | memoryview,
    length: int,
    context_id: int,
    pdu_size: int,
    stall_s: float,
) -> None:
    """One C-STORE request (`command`, then `length` bytes of `data_set`, a file or bytes in memory) as
    P-DATA-TF PDUs written to the association's socket by the calling thread, a DIRECT_BLOCK of the
    data set at a time.

    The sender has the socket's turn (services/gateway/dimse_exchange.py): meanwhile the DUL thread
    neither reads the socket nor writes what is queued for it, so the two never write at once. The
    DUL's state machine stays in Sta6 for a P-DATA (PS3.8 9.2, DT-1), so it misses nothing. A data set
    shorter than `length` ends the send with ConnectionError: the PDUs already written promised the
    rest."""
    piece = pdu_size - 6
    block = max(1, DIRECT_BLOCK // piece) * piece
    head, sent = command, 0
    for data in _blocks(data_set, length, block):
        sent += len(data)
        send_all(sock, pdu_buffers(context_id, head, data, piece, last=sent == length), stall_s)
        head = b""


def _blocks(data_set: BufferedReader | BytesIO | memoryview, length: int, block: int) -> Iterator[memoryview]:
    """`length` bytes of `data_set`, `block` at a time (one empty block when `length` is 0). Bytes in
    memory are sliced where they are, no copy; a file's blocks are read into one buffer, so each block
    is to be sent before the next is asked for. ConnectionError when the data set is shorter."""
    if isinstance(data_set, memoryview):
        if len(data_set) != length:
            raise ConnectionError("the data set is not as long as its length")
        for start in range(0, max(length, 1), block):
            yield data_set[start : start + block]
        return
    view = memoryview(bytearray(min(block, length)))
    remaining = length
    while True:
        size = min(block, remaining)
        got = data_set.readinto(view[:size]) if size else 0
        while got < size:  # a file may give less than asked before its end
            more = data_set.readinto(view[got:size])
            if not more:
                raise ConnectionError("the data set ended before its length")
            got += more
        remaining -= size
        yield view[:size]
        if remaining == 0:
            return
