"""Calling AE titles of the registered organisations, re-read from MongoDB every few seconds.

The C-STORE SCP refuses unknown callers at association (PS3.8 Table 9-21: "calling-AE-title-not-
recognized"), and an organisation added at run time can send within one refresh, without a restart.
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType

log = logging.getLogger(__name__)

# pynetdicom treats an empty require_calling_aet list as "accept every caller". With no organisation
# registered we want the opposite, so the list then holds one title no organisation has: a random one
# (organisation titles are chosen by operators), and the C-STORE handler checks the organisation too.
_NOBODY = "imx-" + secrets.token_hex(6)


def allowed_calling_aets(titles: Iterable[str]) -> list[str]:
    """What to give pynetdicom's `require_calling_aet`: never empty."""
    return sorted(set(titles)) or [_NOBODY]


class CallingAeTitles:
    """Thread-safe: association threads read `org_for`, one background thread refreshes."""

    def __init__(
        self,
        load: Callable[[], Mapping[str, str]],
        on_change: Callable[[list[str]], None],
        interval_s: float = 5.0,
    ) -> None:
        self._load = load
        self._on_change = on_change
        self._interval_s = interval_s
        self._titles: Mapping[str, str] = MappingProxyType({})
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def org_for(self, ae_title: str) -> str | None:
        return self._titles.get(ae_title.strip())

    def refresh(self) -> bool:
        """Re-read the titles; on failure the last good set stays in force."""
        try:
            titles = MappingProxyType(dict(self._load()))
        except Exception as exc:  # MongoDB down: keep serving the organisations we know
            log.warning("calling AE titles not refreshed", extra={"error": type(exc).__name__})
            return False
        changed = titles != self._titles
        self._titles = titles  # one reference swap: readers see the old map or the new one
        if changed:
            self._on_change(allowed_calling_aets(titles))
            log.info("calling AE titles updated", extra={"count": len(titles)})
        return True

    def start(self) -> None:
        # Nobody until the first load succeeds: pynetdicom's default (an empty list) lets everybody in.
        self._on_change(allowed_calling_aets(self._titles))
        self.refresh()
        self._thread = threading.Thread(target=self._run, name="imx-calling-aets", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            self.refresh()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self._interval_s + 1)
