"""A cap on the STOW-RS uploads one organisation has open at once.

Without it one sender (or one stolen API key) could open thousands of slow uploads and hold every
connection, buffer and thread-pool slot the service has, starving every other trust. The cap is per
organisation, so a busy trust waits for its own uploads, not for another's.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from opentelemetry import metrics


class UploadSlots:
    def __init__(self, per_org: int) -> None:
        if per_org < 1:
            raise ValueError("at least one upload per organisation")
        self.per_org = per_org
        self._open: dict[str, int] = {}
        self._lock = threading.Lock()
        self._refused = metrics.get_meter("imx.ingest").create_counter(
            "imx.ingest.stow.refused_busy",
            unit="{request}",
            description="STOW-RS requests refused because their organisation had its cap of uploads open",
        )

    @contextmanager
    def hold(self, org: str) -> Iterator[bool]:
        """Yields True with a slot held until the block ends, or False (counted) when `org` has none free."""
        with self._lock:
            held = self._open.get(org, 0)
            granted = held < self.per_org
            if granted:
                self._open[org] = held + 1
        if not granted:
            self._refused.add(1, {"org": org})
            yield False
            return
        try:
            yield True
        finally:
            with self._lock:
                remaining = self._open[org] - 1
                if remaining:
                    self._open[org] = remaining
                else:
                    del self._open[org]
