"""A requestor's responses stay the requestor's: pynetdicom's reactor must not drop them.

`Association.send_c_store` (and the gateway's own sends) pause the association's reactor before they
send, but pynetdicom's pause is a flag read without a lock: right after the previous send resumed it,
the reactor is between its checkpoint and clearing `_is_paused`, so the next send sees a stale
"paused" and goes on. When the peer answers inside that window the reactor takes the response, logs
"Received unexpected C-STORE service message", drops it, and the sender waits out the whole DIMSE
timeout. The gateway met it about once in 300 back-to-back sends; the test senders
(tools/demo/senders.py) met it twice in CI (tests/e2e/test_replicas.py).
"""

from __future__ import annotations

from typing import Any

from pynetdicom.association import Association


def keep_responses_for_sender(assoc: Association) -> None:
    """Make the association's reactor put back any response it takes off the DIMSE queue, for the
    sender waiting on it (module doc). Requests from the peer are still served as before. Before this,
    back-to-back sends from the gateway's fetch-ahead stalled about once in 300 instances: seven 60 s
    stalls in a 2,000-instance `make bench`."""
    serve = assoc._serve_request
    queue = assoc.dimse.msg_queue

    def serve_requests_only(msg: Any, context_id: int) -> None:
        if msg.is_valid_response:
            queue.put((context_id, msg))  # the sender's, not the reactor's
            return
        serve(msg, context_id)

    assoc._serve_request = serve_requests_only  # type: ignore[method-assign]
