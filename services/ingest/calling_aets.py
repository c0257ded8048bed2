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

from services.common.stores.organisations import CallingOrg
from services.common.ttl_cache import RefreshingSnapshot

log = logging.getLogger(__name__)

# pynetdicom treats an empty require_calling_aet list as "accept every caller". With no organisation
# registered we want the opposite, so the list then holds one title no organisation has: a random one
# (organisation titles are chosen by operators), and the C-STORE handler checks the organisation too.
_NOBODY = "imx-" + secrets.token_hex(6)
_NO_TITLES: Mapping[str, CallingOrg] = MappingProxyType({})


def allowed_calling_aets(titles: Iterable[str]) -> list[str]:
    """What to give pynetdicom's `require_calling_aet`: never empty."""
    return sorted(set(titles)) or [_NOBODY]


class CallingAeTitles:
    """Thread-safe: association threads read `caller`; a background thread refreshes every
    `interval_s`, and the organisation admin API right after a change. The timer is a thread, not a
    check on lookup, because pynetdicom refuses a caller missing from its list before any lookup."""

    def __init__(
        self,
        load: Callable[[], Mapping[str, CallingOrg]],
        on_change: Callable[[list[str]], None],
        interval_s: float = 5.0,
    ) -> None:
        self._load = load
        self._on_change = on_change
        self._interval_s = interval_s
        self._titles = RefreshingSnapshot(self._read, interval_s, name="calling AE titles")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def caller(self, ae_title: str) -> CallingOrg | None:
        """The organisation the title stands for, and where it may call from."""
        return self._current().get(ae_title.strip())

    def refresh(self) -> bool:
        """Re-read the titles; on failure the last good set stays in force."""
        try:
            self._titles.refresh()
        except Exception as exc:  # MongoDB down: keep serving the organisations we know
            log.warning("calling AE titles not refreshed", extra={"error": type(exc).__name__})
            return False
        return True

    def _current(self) -> Mapping[str, CallingOrg]:
        return self._titles.peek() or _NO_TITLES

    def _read(self, previous: Mapping[str, CallingOrg] | None) -> Mapping[str, CallingOrg]:
        # Applied inside the snapshot's check, one at a time: two refreshes cannot apply in the wrong order.
        titles = MappingProxyType(dict(self._load()))
        # The first load always applies: until then every caller may associate (`start`), and with no
        # organisation registered an empty list would have left it so.
        if previous is None or titles != previous:
            self._on_change(allowed_calling_aets(titles))
            log.info("calling AE titles updated", extra={"count": len(titles)})
        return titles

    @property
    def loaded(self) -> bool:
        """Whether the titles were read at least once (MongoDB may be away when ingest starts)."""
        return self._titles.peek() is not None

    def start(self) -> None:
        # Until the first load succeeds, every caller may associate (pynetdicom's empty list) and every
        # C-STORE is answered "try again" (StoreHandler asks `loaded`): refused at association instead,
        # "calling AE title not recognized" is permanent, and senders stopped sending for good.
        self._on_change([])
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
