"""uvicorn in a background thread, beside the consumer loop that owns the main thread (and its signals)."""

from __future__ import annotations

import threading
import time

import uvicorn
from fastapi import FastAPI


class HttpServer:
    def __init__(self, app: FastAPI, host: str, port: int) -> None:
        config = uvicorn.Config(app, host=host, port=port, log_config=None, access_log=False, lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="audit-http", daemon=True)
        self._where = f"{host}:{port}"
        self.port = port

    def start(self, timeout_s: float = 10.0) -> None:
        """Returns once the socket is bound; raises OSError when it cannot be."""
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            # uvicorn ends its thread (SystemExit) when it cannot bind.
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise OSError(f"cannot serve HTTP on {self._where} (in use?)")
            time.sleep(0.02)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]

    def stop(self, timeout_s: float = 10.0) -> None:
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout_s)
