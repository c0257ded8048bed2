"""Fetching a delivered object: WADO-RS GET of `PartnerDelivery.retrieval_url` with the partner's key,
streamed into a temp file under the gateway's state folder and hashed while it is written, so an
object of any size costs one buffer of memory. The SHA-256 and size named by the delivery must match.

imx answers an instance request with `application/dicom`; a server that answers with
`multipart/related` (PS3.18 8.7.3 allows it for an instance) is read too: its first part is the file.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path
from typing import BinaryIO

import httpx

from services.proto_gen.imx.v1 import events_pb2

ACCEPT = 'application/dicom, multipart/related; type="application/dicom"; transfer-syntax=*'


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


class _FirstPart:
    """Writes the body of the first part of a multipart/related stream (RFC 2046 5.1.1), chunk by
    chunk, holding back only as many bytes as the closing delimiter is long."""

    def __init__(self, boundary: bytes, out: BinaryIO, digest: hashlib._Hash) -> None:
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
        self._client = client or httpx.Client(timeout=httpx.Timeout(60.0, connect=10.0))
        incoming.mkdir(parents=True, exist_ok=True)

    def fetch(self, delivery: events_pb2.PartnerDelivery) -> Path:
        """The verified object in a temp file the caller deletes; FetchFailure otherwise."""
        if not delivery.retrieval_url.startswith(("http://", "https://")):
            raise FetchFailure("no-retrieval-url", retryable=False)
        fd, name = tempfile.mkstemp(dir=self._incoming, prefix="fetch-", suffix=".dcm")
        path = Path(name)
        try:
            with os.fdopen(fd, "wb") as out:
                digest, size = self._download(delivery, out)
            if size != delivery.blob.size:
                raise FetchFailure("size-mismatch", retryable=True)
            if digest != delivery.blob.sha256:
                raise FetchFailure("sha256-mismatch", retryable=True)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return path

    def _download(self, delivery: events_pb2.PartnerDelivery, out: BinaryIO) -> tuple[str, int]:
        digest = hashlib.sha256()
        limit = delivery.blob.size
        try:
            with self._client.stream("GET", delivery.retrieval_url, headers=self._headers) as response:
                _raise_for(response.status_code)
                content_type = response.headers.get("content-type", "")
                boundary = _boundary(content_type) if content_type.lower().startswith("multipart/") else None
                part = _FirstPart(boundary, out, digest) if boundary else None
                size = 0
                for chunk in response.iter_bytes(1024 * 1024):
                    if part is not None:
                        part.feed(chunk)
                        size = part.size
                    else:
                        out.write(chunk)
                        digest.update(chunk)
                        size += len(chunk)
                    if size > limit:  # never let a wrong answer fill the disk
                        raise FetchFailure("size-mismatch", retryable=True)
                if part is not None and not part.done:
                    raise FetchFailure("truncated-multipart", retryable=True)
        except httpx.TimeoutException:
            raise FetchFailure("fetch-timeout", retryable=True) from None
        except httpx.TransportError:
            raise FetchFailure("source-unreachable", retryable=True, unavailable=True) from None
        return digest.hexdigest(), size

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._client.close()


def _raise_for(status: int) -> None:
    if status == 200:
        return
    if status in (401, 403):
        raise FetchFailure(f"http-{status}", retryable=False, refused=True)
    if status in (404, 410):
        raise FetchFailure(f"http-{status}", retryable=False)
    if status == 503:
        raise FetchFailure("http-503", retryable=True, unavailable=True)
    raise FetchFailure(f"http-{status}", retryable=status >= 500 or status in (408, 429))
