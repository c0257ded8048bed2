"""A started service's own objects, kept out of the cyclic collector's full collections.

What a service builds before it serves (modules, pydicom's dictionaries, clients, caches) lives as long
as its process, yet every full collection walks all of it (88,000-125,000 objects). Timed by
`gc.callbacks` over `make bench` windows of 2,000 instances (2026-12-06): audit made one full collection
of 75-78 ms and deid one of 41-49 ms; with their objects frozen, 1 ms and none. Ingest froze first: its
pynetdicom acceptor forces a full collection every 60 passes of its loop (service_actions). Whatever is
made after the freeze is collected as before.
"""

from __future__ import annotations

import gc
import threading


def freeze_started_objects() -> bool:
    """Collect what is garbage now, then move every object left to the permanent generation; True if it did.

    Only in a service's own process, where the main thread starts it: a service started in a thread
    of another process (the tests) leaves that process's objects alone."""
    if threading.current_thread() is not threading.main_thread():
        return False
    gc.collect()  # cyclic garbage frozen now would never be freed
    gc.freeze()
    return True
