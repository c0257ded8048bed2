"""HTTP/1.1 by hand over a plain socket, for tests that need control of the connection itself
(keep-alive, the socket options the server set, clients that stall)."""

from __future__ import annotations

import socket


def exchange(sock: socket.socket, request: bytes, ends_with: bytes) -> bytes:
    """Send `request` on `sock` and read the answer until it ends with `ends_with` (its expected body);
    fails when the server closes the connection first."""
    sock.sendall(request)
    answer = b""
    while not answer.endswith(ends_with):
        chunk = sock.recv(65536)
        assert chunk, f"connection closed after {answer!r}"
        answer += chunk
    return answer


def read_answer(sock: socket.socket) -> bytes:
    """One answer with a Content-Length body, read from `sock` whether or not the server then closes;
    fails when the server closes before the answer is whole."""
    answer = b""
    while b"\r\n\r\n" not in answer:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed after {answer!r}"
        answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")[1:] if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed after {answer!r}"
        body += chunk
    return head + b"\r\n\r\n" + body
