"""C-STORE requests served in the thread that received them.

pynetdicom hands every complete DIMSE message from the association's DUL thread (which reads the
socket) to its association thread through a queue and an event, and the association thread's response
back through another queue and a wake-up of the DUL thread, which then sends it: two thread hops and
their wake-ups per instance, on top of the instance's own work (issue 10: ingest's two DUL threads
spent 2.5 ms of CPU per instance, its association threads 1.3 ms, with 77 futex calls per instance).

Here, when the DUL thread completes a C-STORE-RQ that pynetdicom would give to its Storage service
class on an accepted presentation context of its own SOP class, and nothing is ahead of it (no message queued for the
association thread, none being served there), the DUL thread runs that service class itself:
`StorageServiceClass.SCP`, which calls the EVT_C_STORE handler with the same event (`event.assoc`,
`event.context`, `event.request` with its `dataset_path`) and answers its status the same way (0xC211
when the handler raises). The response is then sent by the same thread (`dimse_encoding`), as the
state machine's DT-1 would send it. Anything else (C-ECHO, a request on a context not accepted, an
invalid request, a request after the association's release began) goes through pynetdicom's queue as
before, and a C-STORE completed while such a message waits or is served is queued behind it, so
responses keep their order. Association PDUs, release, abort and malformed input are untouched:
they are the state machine's, in the DUL thread, as before.

While the DUL thread serves a request it reads nothing else from the peer; the senders ingest serves
wait for each response before sending more (one operation at a time, PS3.7 D.3.3.3.1: ingest
negotiates no asynchronous operations window). An A-ABORT or a closed connection is seen when the
handler returns, as pynetdicom's association thread saw it only after its handler returned too. The
network timeout is not counted against the association while its handler runs (`idle_timer_expired`),
as pynetdicom's association thread could not look at it then either.
"""

from __future__ import annotations

import functools
import logging
import threading
from typing import Any, cast

from pynetdicom import _config, evt
from pynetdicom.association import Association
from pynetdicom.dimse_messages import DIMSEMessage
from pynetdicom.dimse_primitives import C_CANCEL, C_STORE, N_EVENT_REPORT
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.presentation import PresentationContext
from pynetdicom.service_class import StorageServiceClass
from pynetdicom.sop_class import uid_to_service_class
from pynetdicom.utils import make_target

from services.ingest import command_sets
from services.ingest.received_files import ReceivedFile

log = logging.getLogger(__name__)

_UNRESTRICTED_STORAGE = "1.2.840.10008.5.1.4.1.1.1"  # what pynetdicom serves every C-STORE as, when told to
_MAX_CANCELS = 10  # pynetdicom keeps at most this many C-CANCEL requests


class Turns:
    """Who serves the association's next request: the association thread while it has taken a queued
    message it has not finished serving, or while one waits in its queue; otherwise the DUL thread.

    `taken` and the DUL thread's look at the queue are under one lock, so a message can never be taken
    off the queue, unseen by the DUL thread, and answered after one the DUL thread served later."""

    def __init__(self, assoc: Association) -> None:
        self._lock = threading.Lock()
        self._queue = assoc.dimse.msg_queue
        self._taken = 0
        self.serving = False  # the DUL thread is serving a request

    def take(self, get: Any, block: bool, timeout: float | None) -> Any:
        """The association thread's `msg_queue.get`. A blocking get (a sender waiting for a response,
        which ingest's acceptor associations never make) is counted after it returns."""
        if block:
            item = get(True, timeout)
            with self._lock:
                self._taken += 1
            return item
        with self._lock:
            item = get(False)
            self._taken += 1
        return item

    def done(self) -> None:
        with self._lock:
            self._taken -= 1

    def claim(self) -> bool:
        """For the DUL thread: True when nothing is ahead of its request; it serves it now."""
        with self._lock:
            if self._taken or not self._queue.empty():
                return False
            self.serving = True
            return True


def storage_context(assoc: Association, request: Any, context_id: int | None) -> PresentationContext | None:
    """The accepted context of a C-STORE request pynetdicom would serve with its Storage service class
    (`Association._serve_request`), when the request's SOP class is the context's; None otherwise."""
    if type(request) is not C_STORE or assoc._sent_release or not request.is_valid_request:
        return None
    context = assoc._accepted_cx.get(context_id) if context_id is not None else None
    class_uid = str(request.AffectedSOPClassUID)
    if context is None or context.abstract_syntax != class_uid:  # unusual: left to pynetdicom
        return None
    extended: Any = assoc.acceptor.accepted_common_extended
    if class_uid in extended:
        class_uid = str(extended[class_uid][0])
    if _config.UNRESTRICTED_STORAGE_SERVICE:
        class_uid = _UNRESTRICTED_STORAGE
    return context if _service_class(class_uid) is StorageServiceClass else None


@functools.lru_cache(maxsize=1024)
def _service_class(class_uid: str) -> type:
    return uid_to_service_class(class_uid)


def discard_data_set_file(file: object) -> None:
    """Close and remove a served request's data set file that is still there. pynetdicom's Storage service
    removes it after the handler (acceptance moves it into the store first); a C-STORE that pynetdicom
    serves otherwise (a SOP class it has no Storage service for: the association is aborted), or whose
    command set could not be read, left it in the blob folder, up to the instance limit each time, until
    the store's sweep an hour later."""
    if isinstance(file, ReceivedFile):
        file.remove()


def _data_set_fragments_only(primitive: P_DATA) -> bool:
    values = getattr(primitive, "presentation_data_value_list", None) or []
    return bool(values) and all(not data[0] & 1 for _context, data in values)


def serve_stores_in_receiver(assoc: Association, new_message: Any = DIMSEMessage) -> None:
    """Make `assoc` (an acceptor, before its DUL starts) serve C-STORE requests in its DUL thread (module
    doc). `new_message` makes the DIMSE message each request is decoded into (`dimse_receive`)."""
    dimse = assoc.dimse
    dul = assoc.dul
    turns = Turns(assoc)
    queue_get = dimse.msg_queue.get

    def take(block: bool = True, timeout: float | None = None) -> Any:
        return turns.take(queue_get, block, timeout)

    dimse.msg_queue.get = take  # type: ignore[method-assign]

    serve_request = assoc._serve_request

    def serve_queued(msg: Any, context_id: int) -> None:
        try:
            serve_request(msg, context_id)
        finally:
            turns.done()
            file, msg._dataset_file = getattr(msg, "_dataset_file", None), None
            discard_data_set_file(file)

    assoc._serve_request = serve_queued  # type: ignore[method-assign]

    idle_timer_expired = dul.idle_timer_expired

    def idle_expired() -> bool:
        return not turns.serving and idle_timer_expired()

    dul.idle_timer_expired = idle_expired  # type: ignore[method-assign]

    late_said = False

    def receive_primitive(primitive: P_DATA) -> None:
        """`DIMSEServiceProvider.receive_primitive`, serving a C-STORE request here when it may."""
        nonlocal late_said
        message = dimse.message
        if message is None:
            if _data_set_fragments_only(primitive):
                # A data set whose request was answered as having none (missing_data_sets: it began later
                # than IMX_DICOM_DATA_SET_WAIT_S): dropped. As the start of a message it aborted the
                # association, the sender's next request failing with it. Said once per association (the
                # peer marks its fragments, and could have filled the log).
                if not late_said:
                    late_said = True
                    log.warning("late data set dropped: its request was answered")
                return
            message = dimse.message = new_message()
        if not message.decode_msg(primitive, assoc):
            return
        evt.trigger(assoc, evt.EVT_DIMSE_RECV, {"message": message})
        context_id = message.context_id
        try:
            request = command_sets.to_primitive(message)
        except Exception:
            log.error("Received an invalid DIMSE message", exc_info=True)
            dul.event_queue.put("Evt19")  # ends the association, as pynetdicom does
            dimse.message = None
            discard_data_set_file(getattr(message, "_data_set_file", None))
            return
        # Taken off the provider before it is served: the next request, or the missing-data-sets
        # watcher, never sees this one as still arriving.
        dimse.message = None
        context = storage_context(assoc, request, context_id)
        if context is not None and turns.claim():
            try:
                dimse.cancel_req = {}
                StorageServiceClass(assoc).SCP(cast(C_STORE, request), context)
                dimse.cancel_req = {}
            finally:
                turns.serving = False
            return
        # pynetdicom's own hand-over to the association thread
        if isinstance(request, C_CANCEL) and len(dimse.cancel_req) < _MAX_CANCELS:
            dimse.cancel_req[int(request.MessageIDBeingRespondedTo)] = request  # type: ignore[arg-type]
        elif isinstance(request, N_EVENT_REPORT) and request.is_valid_request:
            threading.Thread(target=make_target(serve_request), args=(request, context_id)).start()
        else:
            dimse.msg_queue.put(cast(Any, (context_id, request)))

    dimse.receive_primitive = receive_primitive  # type: ignore[method-assign]
