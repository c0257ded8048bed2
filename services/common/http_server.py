"""uvicorn on a background thread, beside the loop that owns the main thread (and its signals).

One class for every service's HTTP surface (ingest's STOW-RS, audit's query API, delivery's DICOMweb):
- the socket is bound in the constructor, so port 0 yields a known port before anything starts and a
  port in use fails at once with OSError;
- `log_config=None`: uvicorn's records go through the service's PHI-safe JSON handler;
- no access log: request paths carry study UIDs; each service logs its own summary;
- `stop()` stops accepting and lets requests in flight finish, up to `grace_s`;
- an idle kept-alive connection is closed after `keep_alive_s` (a route bounds its own body reads).
"""

from __future__ import annotations

import socket
import threading
import time

import uvicorn
from fastapi import FastAPI


class HttpServer:
    def __init__(
        self, app: FastAPI, host: str, port: int, grace_s: float = 10.0, name: str = "http", keep_alive_s: int = 5
    ) -> None:
        self._socket = socket.create_server((host, port), reuse_port=False)
        self.host = host
        self.port: int = self._socket.getsockname()[1]
        self._grace_s = max(1.0, grace_s)
        config = uvicorn.Config(
            app,
            log_config=None,
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=max(1, int(grace_s)),
            timeout_keep_alive=keep_alive_s,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, name=f"imx-{name}", daemon=True
        )
        self._name = name

    def start(self, timeout_s: float = 10.0) -> None:
        """Returns once uvicorn serves; raises OSError when it does not start in time."""
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            # uvicorn ends its thread (SystemExit) when it cannot start.
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise OSError(f"the {self._name} HTTP server did not start on port {self.port}")
            time.sleep(0.02)

    def stop(self) -> None:
        """Stop accepting; requests in flight finish (up to the graceful-shutdown time). Idempotent."""
        self._server.should_exit = True
        if self._thread.is_alive():
            # uvicorn's own grace, plus a little for its loop to notice should_exit and close.
            self._thread.join(self._grace_s + 5.0)
        self._socket.close()
