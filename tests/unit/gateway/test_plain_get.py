"""The gateway's plain HTTP GET (services/gateway/plain_get.py) reads an answer's head as http.client
would: its status, its Content-Length (None when the body is not framed by one), its type and whether
the connection stays open; a malformed head is http.client's HTTPException, so it is classified as
before (source-unreachable)."""

from __future__ import annotations

import http.client

import pytest

from services.gateway.plain_get import Head, parse_head, request_bytes


def test_an_answer_head_is_read_for_status_length_type_and_keep_alive() -> None:
    head = b"HTTP/1.1 200 OK\r\ncontent-type: application/dicom\r\nContent-Length: 527000\r\nserver: x"
    assert parse_head(head) == Head(200, 527000, "application/dicom", True)
    assert parse_head(b"HTTP/1.1 404 Not Found\r\nConnection: close\r\nContent-Length: 9") == Head(404, 9, "", False)
    assert parse_head(b"HTTP/1.0 200 OK\r\nContent-Length: 3") == Head(200, 3, "", False)
    assert parse_head(b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\nConnection: keep-alive").keep_alive


def test_a_body_not_framed_by_a_content_length_is_left_to_http_client() -> None:
    assert parse_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked").length is None
    assert parse_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5").length is None
    assert parse_head(b"HTTP/1.1 200 OK\r\nContent-Type: application/dicom").length is None


@pytest.mark.parametrize(
    "head",
    [
        b"ICY 200 OK",
        b"HTTP/2 200",
        b"HTTP/1.1 2x0 OK",
        b"HTTP/1.1 200 OK\r\nno colon here",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1",
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4",
    ],
)
def test_a_malformed_head_is_an_http_exception(head: bytes) -> None:
    with pytest.raises(http.client.HTTPException):
        parse_head(head)


def test_the_request_is_one_piece_with_host_and_the_fetchers_headers() -> None:
    request = request_bytes("/a/b?ref=1", "127.0.0.1:8046", {"Authorization": "Bearer k", "Accept": "*/*"})
    assert request == (
        b"GET /a/b?ref=1 HTTP/1.1\r\nHost: 127.0.0.1:8046\r\nAccept-Encoding: identity\r\n"
        b"Authorization: Bearer k\r\nAccept: */*\r\n\r\n"
    )
