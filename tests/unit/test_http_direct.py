"""The server's direct path takes only a plain GET (services/common/http_direct.py): exactly one complete
HTTP/1.1 request with a Host header and nothing that asks for more than a plain answer; anything else
is left to uvicorn's h11, which answers it (or refuses it) as before."""

from __future__ import annotations

import io

import pytest

from services.common.http_direct import FileAnswer, answer_prefix, plain_get, status_line

GET = b"GET /dicomweb/studies/1.2/series/1.2.3/instances/1.2.3.4?ref=abc HTTP/1.1\r\n"


def test_a_plain_get_is_read_with_its_target_and_lower_cased_stripped_headers() -> None:
    got = plain_get(GET + b"Host: 127.0.0.1:8046\r\nAuthorization:  Bearer k \r\nConnection: Keep-Alive\r\n\r\n")
    assert got is not None
    assert got.target == b"/dicomweb/studies/1.2/series/1.2.3/instances/1.2.3.4?ref=abc"
    assert got.headers == [
        (b"host", b"127.0.0.1:8046"),
        (b"authorization", b"Bearer k"),
        (b"connection", b"Keep-Alive"),
    ]


@pytest.mark.parametrize(
    "data",
    [
        GET + b"Host: h\r\n",  # not complete yet
        GET + b"Host: h\r\n\r\n" + GET + b"Host: h\r\n\r\n",  # pipelined: two requests
        GET + b"Accept: */*\r\n\r\n",  # no Host (h11 refuses it)
        GET.replace(b"GET", b"HEAD") + b"Host: h\r\n\r\n",
        GET.replace(b"GET", b"POST") + b"Host: h\r\nContent-Length: 0\r\n\r\n",
        GET.replace(b"HTTP/1.1", b"HTTP/1.0") + b"Host: h\r\n\r\n",
        GET + b"Host: h\r\nContent-Length: 3\r\n\r\n",
        GET + b"Host: h\r\nTransfer-Encoding: chunked\r\n\r\n",
        GET + b"Host: h\r\nConnection: close\r\n\r\n",
        GET + b"Host: h\r\nExpect: 100-continue\r\n\r\n",
        GET + b"Host: h\r\nUpgrade: websocket\r\n\r\n",
        GET + b"Host: h\r\nX-Folded: a\r\n b\r\n\r\n",  # obsolete line folding
        GET + b"Host: h\r\nBad Name: a\r\n\r\n",
        GET + b"Host: h\r\nX-Control: a\x01b\r\n\r\n",
        b"GET /a b HTTP/1.1\r\nHost: h\r\n\r\n",
        b"GET relative HTTP/1.1\r\nHost: h\r\n\r\n",
        GET + b"Host: h\r\nX-Long: " + b"a" * 9000 + b"\r\n\r\n",
    ],
)
def test_anything_but_one_plain_get_is_left_to_h11(data: bytes) -> None:
    assert plain_get(data) is None


def test_the_answer_prefix_is_status_headers_and_head_in_one_piece() -> None:
    answer = FileAnswer(200, [(b"content-length", b"7")], b"abc", io.BytesIO(b"defg"), 0, 4, lambda _whole: None)
    prefix = answer_prefix(status_line(200, b"OK"), [(b"server", b"uvicorn")], answer)
    assert prefix == b"HTTP/1.1 200 OK\r\nserver: uvicorn\r\ncontent-length: 7\r\n\r\nabc"
