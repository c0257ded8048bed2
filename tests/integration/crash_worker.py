"""A consumer process for the crash test: it logs every value it handles (fsynced) and, when asked,
SIGKILLs itself right after handling its N-th message: after the handler ran, before the commit.

Usage: python -m tests.integration.crash_worker BOOTSTRAP IN_TOPIC OUT_TOPIC GROUP LOG KILL_AFTER
(KILL_AFTER 0 = never; the worker then exits once it has handled something and then seen nothing new
for 5 s. The first messages can take a while: the group waits for the killed member's session to expire.)
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

from services.common.bus import BusProducer
from services.common.messages import IncomingMessage, OutgoingMessage
from tests.integration.bus_helpers import stage_consumer


def command(bootstrap: str, in_topic: str, out_topic: str, group: str, log_path: Path, kill_after: int) -> list[str]:
    """The command line that runs this worker (from the repository's root), arguments as `main` takes them."""
    return [sys.executable, "-m", __spec__.name, bootstrap, in_topic, out_topic, group, str(log_path), str(kill_after)]


def main(bootstrap: str, in_topic: str, out_topic: str, group: str, log_path: str, kill_after: int) -> None:
    handled = 0
    last_seen = time.monotonic()
    log_fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def handler(message: IncomingMessage) -> list[OutgoingMessage]:
        nonlocal handled, last_seen
        os.write(log_fd, message.value + b"\n")
        os.fsync(log_fd)
        handled += 1
        last_seen = time.monotonic()
        if kill_after and handled >= kill_after:
            os.kill(os.getpid(), signal.SIGKILL)
        return [OutgoingMessage(out_topic, message.value, message.key)]

    producer = BusProducer(bootstrap)
    consumer = stage_consumer(
        bootstrap,
        producer,
        [in_topic],
        group,
        out_topic + ".dlq",
        stage="crash-test",
        max_batch=50,
        group_instance_id="crash-worker",
    )
    stop = threading.Event()
    while not stop.is_set():
        consumer.poll_once(handler)
        if handled and time.monotonic() - last_seen > 5:
            stop.set()
    consumer.close()
    producer.close()


if __name__ == "__main__":
    b, i, o, g, lp, k = sys.argv[1:7]
    main(b, i, o, g, lp, int(k))
