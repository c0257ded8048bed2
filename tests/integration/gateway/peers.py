"""Real receiving systems and a retrieval server for the gateway's tests: dcmtk's storescp, Orthanc
with its DICOMweb plugin, and a stdlib HTTP server standing in for imx's WADO-RS."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx

from tests.tls_certs import ServerCertificate
from tools.devstack import free_port, free_ports

ORTHANC_DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


def wait_for_port(port: int, seconds: float = 15) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Storescp:
    """dcmtk's storescp on a free port, bit-preserving (+B: the file is what arrived on the wire) and
    with unique file names (+uf: a re-sent instance is a second file, so re-sends can be counted)."""

    def __init__(self, root: Path, extra: tuple[str, ...] = ()) -> None:
        self.port = free_port()
        self.out = root / "storescp"
        self.out.mkdir(parents=True, exist_ok=True)
        self._extra = extra
        self._log = root / "storescp.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"dicom://STORESCP@127.0.0.1:{self.port}"

    def start(self) -> None:
        with self._log.open("ab") as log:
            self._proc = subprocess.Popen(
                [
                    "storescp",
                    "--max-pdu",
                    "131072",
                    "-aet",
                    "STORESCP",
                    "+B",
                    "+uf",
                    *self._extra,
                    "-od",
                    str(self.out),
                    str(self.port),
                ],
                env={**os.environ, "TCP_NODELAY": "1"},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_for_port(self.port)

    def stop(self) -> None:
        if self._proc is not None:
            _stop(self._proc)
            self._proc = None

    def files(self) -> list[Path]:
        return sorted(p for p in self.out.iterdir() if p.is_file() and not p.name.startswith("."))


@contextmanager
def storescp(root: Path, extra: tuple[str, ...] = ()) -> Iterator[Storescp]:
    server = Storescp(root, extra)
    server.start()
    try:
        yield server
    finally:
        server.stop()


class Orthanc:
    def __init__(self, http_port: int, dicom_port: int) -> None:
        self.http = f"http://127.0.0.1:{http_port}"
        self.dicom_port = dicom_port

    def sop_instance_uids(self) -> set[str]:
        ids = httpx.get(f"{self.http}/instances", timeout=10).json()
        return {
            httpx.get(f"{self.http}/instances/{i}/simplified-tags", timeout=10).json()["SOPInstanceUID"] for i in ids
        }


@contextmanager
def orthanc(root: Path) -> Iterator[Orthanc]:
    """Our own Orthanc: loopback ports, storage in `root`, the DICOMweb plugin, Nagle off."""
    if shutil.which("Orthanc") is None or not ORTHANC_DICOMWEB_PLUGIN.exists():
        raise RuntimeError("Orthanc and orthanc-dicomweb are needed (apt-get install orthanc orthanc-dicomweb)")
    http_port, dicom_port = free_ports(2)  # distinct: two calls once gave Orthanc one port for both
    config = {
        "Name": "imx-gateway-test",
        "StorageDirectory": str(root / "orthanc-db"),
        "IndexDirectory": str(root / "orthanc-db"),
        "HttpPort": http_port,
        "HttpBindAddress": "127.0.0.1",
        "DicomPort": dicom_port,
        "DicomAet": "ORTHANC",
        "DicomCheckCalledAet": False,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "MaximumPduLength": 131072,
        "Plugins": [str(ORTHANC_DICOMWEB_PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
    }
    path = root / "orthanc.json"
    path.write_text(json.dumps(config))
    with (root / "orthanc.log").open("ab") as log:
        proc = subprocess.Popen(
            ["Orthanc", str(path)], env={**os.environ, "TCP_NODELAY": "1"}, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{http_port}/plugins", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"Orthanc did not start: {(root / 'orthanc.log').read_text()[-2000:]}")
            time.sleep(0.1)
        wait_for_port(dicom_port)
        yield Orthanc(http_port, dicom_port)
    finally:
        _stop(proc)


class RetrievalServer:
    """WADO-RS instance retrieval as imx serves it: `application/dicom`, Bearer key required, 404 for
    anything unknown. `objects` maps a path to the bytes served; tests may change it while it runs.

    `keep_alive`: HTTP/1.1, connections reused as delivery's server reuses them (`connections` counts
    them); then `close_after` ends each answer by closing the connection without saying so (as an
    idle timeout would). `stall`: answers send their headers and then nothing. `tls`: HTTPS only."""

    def __init__(self, key: str, *, keep_alive: bool = False, tls: ServerCertificate | None = None) -> None:
        self.key = key
        self.objects: dict[str, bytes] = {}
        self.requests = 0
        self.connections = 0
        self.close_after = False
        self.stall = False
        self.before_answer: Callable[[str], None] | None = None  # tests may hold an answer back
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1" if keep_alive else "HTTP/1.0"

            def setup(self) -> None:
                server.connections += 1
                super().setup()

            def do_GET(self) -> None:
                server.requests += 1
                if server.before_answer is not None:
                    server.before_answer(self.path)
                if self.headers.get("Authorization") != f"Bearer {server.key}":
                    self.send_error(401)
                    return
                body = server.objects.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/dicom")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.stall:
                    threading.Event().wait(2)
                    return
                self.wfile.write(body)
                if server.close_after:
                    self.close_connection = True

            def log_message(self, *args: object) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        scheme = "http"
        if tls is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(tls.cert_file, tls.key_file)
            self._httpd.socket = context.wrap_socket(self._httpd.socket, server_side=True)
            scheme = "https"
        self.base = f"{scheme}://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
