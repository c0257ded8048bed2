"""uvicorn on a background thread, on a socket bound up front (so port 0 yields a known port)."""

from __future__ import annotations

import socket
import threading
import time

import uvicorn
from fastapi import FastAPI


class HttpServer:
    def __init__(self, app: FastAPI, host: str, port: int, grace_s: float) -> None:
        self._socket = socket.create_server((host, port), reuse_port=False)
        self.port: int = self._socket.getsockname()[1]
        config = uvicorn.Config(
            app,
            log_config=None,  # uvicorn's records go through the service's PHI-safe JSON handler
            access_log=False,  # request paths can carry UIDs of a study; the service logs its own summary
            lifespan="off",
            timeout_graceful_shutdown=max(1, int(grace_s)),
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, name="imx-ingest-http", daemon=True
        )

    def start(self, timeout_s: float = 10.0) -> None:
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise OSError("the STOW-RS HTTP server did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        """Stop accepting; requests in flight finish (up to the graceful-shutdown timeout)."""
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join()
        self._socket.close()
