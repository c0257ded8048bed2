"""One stored object as a whole `application/dicom` answer, sent by the kernel where the HTTP server
offers it (services/common/http_server.py: the ASGI zero-copy send, os.sendfile), else read and sent
as any body.

Serving the gateways' fetches was most of delivery's CPU in `make bench`: reading each 527 KB file
into memory, and the socket writes of it (py-spy, 2026-12-02). With sendfile the bytes go from the
page cache to the socket without passing through the process. Measured 2026-12-02 (one server process
answering 2,000 fetches of a 527 KB file over one keep-alive connection, the server's CPU per fetch,
four rounds in the order before, after, after, before, twice, load 4.7-6.8): 0.45-0.51 ms read and
written, 0.30-0.42 ms by sendfile.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import BinaryIO

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from services.common.blob_splices import Extent
from services.common.http_direct import FileAnswer
from services.common.http_server import ZERO_COPY_SEND


class ObjectResponse(Response):
    """The file opened now: a file whose size is not the one recorded is not this object any more
    (objects are content-addressed and never rewritten; collected, or damaged), so OSError then, before
    any answer is started. The file is closed once the answer is sent, or when it never is.

    A spliced object (services/common/blob_splices.py) is sent as its head, then its source's range by
    sendfile with that offset and count: the bytes on the wire are the same as for a plain object."""

    _handed_over = False
    # Told once whether the whole answer went out (True) or the transfer broke (False): the retrieval's
    # event says what the partner was sent, not what was meant to be.
    on_done: Callable[[bool], None] | None = None

    def __init__(
        self,
        where: Path | Extent,
        size: int,
        media_type: str,
        release: Callable[[BinaryIO], None] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """`release`: takes the file once the whole answer is sent (blob_store.LaggedDrop: the object is
        read once in the normal path, so its pages are dropped a few answers later); None: closed then.
        `headers`: more of the answer's headers."""
        extent = where if isinstance(where, Extent) else Extent(b"", where, 0, size)
        if extent.size != size:
            raise OSError("the object's extent is not its recorded size")
        handle: BinaryIO = extent.path.open("rb")
        try:
            if os.fstat(handle.fileno()).st_size != extent.file_size:
                raise OSError("the object's file changed size")
        except BaseException:
            handle.close()
            raise
        self.handle, self.size, self.head, self.offset = handle, size, extent.head, extent.offset
        self.release = release
        super().__init__(None, media_type=media_type, headers={**(headers or {}), "content-length": str(size)})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        count = self.size - len(self.head)
        whole = False
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            if ZERO_COPY_SEND in scope.get("extensions", {}):
                if self.head:
                    await send({"type": "http.response.body", "body": self.head, "more_body": True})
                message = {"type": ZERO_COPY_SEND, "file": self.handle, "offset": self.offset, "count": count}
                await send(message)
                whole = bool(message.get("whole", True))  # a client gone part way: not counted as sent
            else:
                self.handle.seek(self.offset)
                await send({"type": "http.response.body", "body": self.head + self.handle.read(count)})
                whole = True
        finally:
            self._let_go(whole)
            if self.on_done is not None:
                self.on_done(whole)
        if self.background is not None:
            await self.background()

    def file_answer(self) -> FileAnswer:
        """This answer for the server's direct path (services/common/http_direct.py): the file is closed
        once it is written, then `on_done` is called (its background task is not run)."""

        def done(whole: bool) -> None:
            self._let_go(whole)
            if self.on_done is not None:
                self.on_done(whole)

        count = self.size - len(self.head)
        return FileAnswer(self.status_code, self.raw_headers, self.head, self.handle, self.offset, count, done)

    def _let_go(self, whole: bool) -> None:
        """The file, once the answer is out: to `release` when it was sent whole, else closed."""
        if whole and self.release is not None and not self._handed_over:
            self._handed_over = True
            self.release(self.handle)
        elif not self._handed_over:
            self.handle.close()

    def __del__(self) -> None:
        handle = getattr(self, "handle", None)  # absent when the constructor refused the file
        if handle is not None and not self._handed_over:
            handle.close()
