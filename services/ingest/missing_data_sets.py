"""C-STORE requests whose data set never comes: answered with a failure instead of left waiting.

A C-STORE-RQ command set says whether a data set follows (Command Data Set Type (0000,0800), PS3.7
E.1-1). A sender that says one follows and then sends none — pynetdicom's SCU does this for an
empty data set: the command says 0x0001 and no data PDV is written — leaves pynetdicom's SCP waiting
for fragments that never arrive, while the sender waits for the response: both sit until a timeout.
Senders write the data set's first fragment right after the command's last (PS3.7 E.2: the data set
follows its command set in the same message), so a request that has had no data for `wait_s` is taken
to have an empty data set: it goes through acceptance like any other input (and so is rejected and quarantined with its
reason), the sender gets that failure status, and the association is ready for its next request.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE

log = logging.getLogger(__name__)

_NO_DATA_SET = 0x0101


@dataclass
class _Pending:
    message: Any
    first_seen: float
    written: int
    received: int  # the association's PDU bytes received (dimse_receive.PduReader) when first seen


def _received(assoc: Any) -> int:
    """The bytes of PDUs the association has received, counted as they arrive (0 without ingest's reader)."""
    return int(getattr(getattr(assoc, "imx_pdu_reader", None), "received", 0))


def _written(message: Any) -> int:
    """How much of the data set has arrived: the temporary file's size past its file meta, or the in-memory
    buffer's. Ingest's receive (dimse_receive.py) says where the data set starts (`imx_data_starts_at`,
    None while it writes the meta). Counting the meta as data, a check that first saw the request before
    its file and then the file with its meta took that for data arriving and never answered (`make
    chaos`, one C-STORE in 10,000 fuzzed inputs: the sender timed out after 30 s)."""
    file = getattr(message, "_data_set_file", None)
    if file is not None:
        starts_at = getattr(file, "imx_data_starts_at", 0)  # 0: pynetdicom's own receive wrote the file
        if starts_at is None:
            return 0
        with suppress(OSError, ValueError):
            return int(file.tell()) - int(starts_at)
    data = getattr(message, "data_set", None)
    return len(data.getvalue()) if data is not None else 0


def _waiting_for_data(message: Any) -> bool:
    """A C-STORE-RQ whose command set is complete and says a data set follows."""
    if not isinstance(message, C_STORE_RQ) or message.context_id is None:
        return False
    command = getattr(message, "command_set", None)
    return command is not None and command.get("CommandDataSetType") != _NO_DATA_SET


class MissingDataSets:
    """Watches the open associations; `answer(assoc, part10)` gives the status for an empty data set."""

    def __init__(
        self,
        associations: Callable[[], Iterable[Any]],
        answer: Callable[[Any, bytes], Dataset],
        wait_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._associations = associations
        self._answer = answer
        self._wait_s = wait_s
        self._clock = clock
        self._pending: dict[int, _Pending] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="ingest-missing-data-sets", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(min(0.25, self._wait_s / 4)):
            try:
                self.check()
            except Exception:  # the watch must outlive one odd association
                log.warning("checking for missing c-store data sets failed", exc_info=False)

    def check(self) -> None:
        """Answer every request that has waited `wait_s` for its first data fragment."""
        now, seen = self._clock(), set()
        for assoc in list(self._associations()):
            message = getattr(getattr(assoc, "dimse", None), "message", None)
            if not _waiting_for_data(message):
                continue
            key = id(message)
            seen.add(key)
            pending = self._pending.get(key)
            if pending is None or pending.message is not message:
                self._pending[key] = _Pending(message, now, _written(message), _received(assoc))
            elif _written(message) != pending.written or _received(assoc) != pending.received:
                pending.written = -1  # data is arriving: the network timeout governs the rest
            elif pending.written >= 0 and now - pending.first_seen >= self._wait_s:
                self._respond(assoc, message)
                seen.discard(key)
        for key in set(self._pending) - seen:
            del self._pending[key]

    def _respond(self, assoc: Any, message: Any) -> None:
        # Taken from pynetdicom's DIMSE provider before answering, so a late fragment (or the next
        # request) starts a new message rather than joining this one.
        if assoc.dimse.message is not message:
            return
        assoc.dimse.message = None
        part10 = b""
        file = getattr(message, "_data_set_file", None)
        if file is not None:
            path = Path(file.name)
            with suppress(OSError):
                file.close()
                part10 = path.read_bytes()  # the file meta pynetdicom wrote, and no data set
                path.unlink()
        command = message.command_set
        status = self._answer(assoc, part10)
        response = C_STORE()
        response.MessageIDBeingRespondedTo = command.MessageID
        response.AffectedSOPClassUID = command.AffectedSOPClassUID
        response.AffectedSOPInstanceUID = command.AffectedSOPInstanceUID
        response.Status = int(status.Status)
        if status.get("ErrorComment"):
            response.ErrorComment = str(status.ErrorComment)  # type: ignore[assignment]  # typed None in pynetdicom
        log.info(
            "c-store without its data set answered",
            extra={"calling_ae": assoc.requestor.ae_title.strip(), "status": f"{response.Status:04X}"},
        )
        assoc.dimse.send_msg(response, int(message.context_id))
