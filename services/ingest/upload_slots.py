"""Caps on the STOW-RS uploads open at once: per organisation, and for the whole service.

Without the first, one sender (or one stolen API key) could open thousands of slow uploads and hold
every connection, buffer and thread-pool slot the service has, starving every other trust; it is per
organisation, so a busy trust waits for its own uploads, not for another's. The second bounds the
process: each upload may hold an instance twice in memory while its part ends (up to
IMX_MAX_INSTANCE_BYTES each), and many organisations at once, each within its own cap, could exceed
the pod's memory. The trade-off: organisations that fill the service's cap between them (four at their
own cap of 8, by default) have every other one refused until an upload ends; more replicas, or a
service cap larger than the per-organisation one times the trusts sending at once, keep them apart.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from opentelemetry import metrics

ORG = "org"
SERVICE = "service"


class UploadSlots:
    def __init__(self, per_org: int, total: int | None = None) -> None:
        if per_org < 1 or (total is not None and total < 1):
            raise ValueError("at least one upload per organisation, and in all")
        self.per_org = per_org
        self.total = total
        self._open: dict[str, int] = {}
        self._open_total = 0
        self._lock = threading.Lock()
        self._refused = metrics.get_meter("imx.ingest").create_counter(
            "imx.ingest.stow.refused_busy",
            unit="{request}",
            description="STOW-RS requests refused because their organisation (cap=org) or the service (cap=service) "
            "had its cap of uploads open",
        )

    @property
    def open_total(self) -> int:
        """Uploads holding a slot now."""
        return self._open_total

    @contextmanager
    def hold(self, org: str) -> Iterator[str | None]:
        """Yields None with a slot held until the block ends, or (counted) the cap that is full: ORG when
        `org` has none free, SERVICE when the service has none."""
        with self._lock:
            held = self._open.get(org, 0)
            full = ORG if held >= self.per_org else None
            if full is None and self.total is not None and self._open_total >= self.total:
                full = SERVICE
            if full is None:
                self._open[org] = held + 1
                self._open_total += 1
        if full is not None:
            self._refused.add(1, {"org": org, "cap": full})
            yield full
            return
        try:
            yield None
        finally:
            with self._lock:
                self._open_total -= 1
                remaining = self._open[org] - 1
                if remaining:
                    self._open[org] = remaining
                else:
                    del self._open[org]
