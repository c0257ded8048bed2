"""Test inputs for ingest: small synthetic instances (MR, 256x256) and a STOW-RS body builder."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from functools import cache

from services.common.dicom.part10 import dataset_to_bytes
from services.common.dicom.synthetic import generate_study, plan_study
from services.common.messages import OutgoingMessage, TransientError

BOUNDARY = "imx-test-boundary-7f3a"
NOT_DICOM = b"this is a plain text file, not a DICOM instance\n" * 4


@cache
def mr_study(seed: int, n: int = 2, source: str = "RTEST") -> tuple[bytes, ...]:
    return tuple(dataset_to_bytes(ds) for ds in generate_study(seed, "MR", n, source))


def mr_study_phi(seed: int, n: int = 2, source: str = "RTEST", min_length: int = 6) -> set[str]:
    """The identifying values planted in mr_study(seed, n, source); short ones match by chance."""
    return {v for v in plan_study(seed, "MR", n, source).phi().values() if len(v) >= min_length}


def multipart_body(parts: Sequence[bytes], boundary: str = BOUNDARY, content_type: str = "application/dicom") -> bytes:
    chunks = [f"--{boundary}\r\nContent-Type: {content_type}\r\n\r\n".encode() + p + b"\r\n" for p in parts]
    return b"".join(chunks) + f"--{boundary}--\r\n".encode()


def stow_content_type(boundary: str = BOUNDARY) -> str:
    return f'multipart/related; type="application/dicom"; boundary={boundary}'


class RecordingBus:
    """Stands in for BusProducer: keeps what was published; `fail` makes the next publishes fail."""

    def __init__(self) -> None:
        self.messages: list[OutgoingMessage] = []
        self.fail = 0
        self.failure: Exception = TransientError("publish failed: KafkaTimeoutError")
        self._lock = threading.Lock()

    def publish(self, messages: Sequence[OutgoingMessage], timeout_s: float = 60.0) -> None:
        with self._lock:
            if self.fail:
                self.fail -= 1
                raise self.failure
            self.messages.extend(messages)

    def on(self, topic: str) -> list[OutgoingMessage]:
        return [m for m in self.messages if m.topic == topic]
