"""Real DICOM peers for tests and benchmarks, started on 127.0.0.1 and stopped by PID: dcmtk's
`storescp` (a PACS that writes what it receives to a folder) and Orthanc (with its DICOMweb plugin
when installed), each with its own configuration and storage in a folder the caller gives.

FIELD-NOTES: dcmtk (and Orthanc, which uses it) leaves Nagle's algorithm on and then stalls each
C-STORE response ~40 ms; TCP_NODELAY=1 in the environment turns it off.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from tools.devstack.processes import ManagedProcess, await_ready, can_connect, free_ports, start_process

DCMTK_ENV = {"TCP_NODELAY": "1"}
DICOMWEB_PLUGIN_PACKAGE = "orthanc-dicomweb"


@dataclass
class StoreScp:
    process: ManagedProcess
    port: int
    ae_title: str
    folder: Path

    @property
    def url(self) -> str:
        return f"dicom://{self.ae_title}@127.0.0.1:{self.port}"

    def files(self) -> list[Path]:
        return [Path(entry.path) for entry in arrived_entries(self.folder)]

    def count(self) -> int:
        """How many files have arrived, from names alone: a benchmark polls this while it runs, and
        `files()` (a Path and a stat per file, each poll) cost its driver ~0.3-0.9 ms of CPU per instance
        by the end of a 2,000-instance run, CPU the pipeline it measures then lacked."""
        return sum(1 for _ in arrived_entries(self.folder))

    def stop(self) -> None:
        self.process.stop(timeout=5)


def arrived_entries(folder: Path) -> Iterator[os.DirEntry[str]]:
    """Files under `folder` but hidden ones, by directory entry types (no stat per file)."""
    pending = [str(folder)]
    while pending:
        try:
            listing = os.scandir(pending.pop())
        except FileNotFoundError:
            continue
        with listing:
            for entry in listing:
                if entry.is_dir(follow_symlinks=False):
                    pending.append(entry.path)
                elif entry.is_file(follow_symlinks=False) and not entry.name.startswith("."):
                    yield entry


def start_storescp(folder: Path, ae_title: str = "STORESCP", port: int | None = None) -> StoreScp:
    """storescp writing each instance bit-preserving (+B) to `folder`, on `port` (default: a free one)."""
    folder.mkdir(parents=True, exist_ok=True)
    port = port or free_ports(1)[0]
    proc = start_process(
        f"storescp-{port}",
        [
            "storescp",
            "--aetitle",
            ae_title,
            "--output-directory",
            str(folder),
            "+B",
            "--max-pdu",
            "131072",
            str(port),
        ],
        folder.parent / f"storescp-{port}.log",
        env={**os.environ, **DCMTK_ENV},
        endpoint=f"127.0.0.1:{port}",
        die_with_parent=True,
    )
    await_ready(proc, lambda p: can_connect(port), timeout=15)
    return StoreScp(proc, port, ae_title, folder)


def dicomweb_plugin() -> Path | None:
    """The Orthanc DICOMweb plugin's shared library, when the Debian package is installed."""
    if shutil.which("dpkg") is None:
        return None
    listed = subprocess.run(["dpkg", "-L", DICOMWEB_PLUGIN_PACKAGE], capture_output=True, text=True, check=False)
    for line in listed.stdout.splitlines():
        if line.endswith(".so") and "DicomWeb" in line:
            return Path(line)
    return None


@dataclass
class Orthanc:
    process: ManagedProcess
    http_port: int
    dicom_port: int
    ae_title: str

    @property
    def rest(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicom_url(self) -> str:
        return f"dicom://{self.ae_title}@127.0.0.1:{self.dicom_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.rest}/dicom-web"

    def instance_count(self) -> int:
        return int(httpx.get(f"{self.rest}/statistics", timeout=10).json()["CountInstances"])

    def stop(self) -> None:
        self.process.stop(timeout=10)


def start_orthanc(
    root: Path,
    ae_title: str = "ORTHANC",
    modalities: dict[str, tuple[str, str, int]] | None = None,
    lua_scripts: list[Path] | None = None,
    dicomweb: bool = True,
    extra: dict[str, object] | None = None,
) -> Orthanc:
    """Orthanc with its own JSON configuration, storage under `root`, REST and DICOM on free ports."""
    root.mkdir(parents=True, exist_ok=True)
    http_port, dicom_port = free_ports(2)
    plugins = []
    if dicomweb:
        plugin = dicomweb_plugin()
        if plugin is None:
            raise RuntimeError(
                f"Orthanc's DICOMweb plugin is missing: install the Debian package {DICOMWEB_PLUGIN_PACKAGE}"
            )
        plugins.append(str(plugin))
    config: dict[str, object] = {
        "Name": f"imx-{ae_title.lower()}",
        "StorageDirectory": str(root / "storage"),
        "IndexDirectory": str(root / "storage"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": ae_title,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomCheckCalledAet": False,
        "DicomAlwaysAllowStore": True,
        "DicomModalities": {name: list(entry) for name, entry in (modalities or {}).items()},
        "LuaScripts": [str(p) for p in lua_scripts or []],
        "Plugins": plugins,
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        "StableAge": 1,
        "HttpServerEnabled": True,
    }
    config.update(extra or {})
    config_path = root / "orthanc.json"
    config_path.write_text(json.dumps(config, indent=2))
    proc = start_process(
        f"orthanc-{http_port}",
        ["Orthanc", str(config_path)],
        root / "orthanc.log",
        env={**os.environ, **DCMTK_ENV},
        endpoint=f"127.0.0.1:{http_port}",
        die_with_parent=True,
    )
    await_ready(proc, lambda p: can_connect(http_port) and can_connect(dicom_port), timeout=30)
    return Orthanc(proc, http_port, dicom_port, ae_title)
