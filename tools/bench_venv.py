"""The virtual environments benchmarks install their peers into (var/bench-venv/<name>): dicognito and
pydicom's deid for `make bench-deid`, confluent-kafka for `make bench-kafka-client`. Never the project's
environment, so no peer becomes a dependency of imx."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path


def ensure_venv(venvs: Path, name: str, requirements: tuple[str, ...]) -> Path:
    """`venvs/name` with exactly `requirements` installed, made once (and again when they change); returns
    its python."""
    home = venvs / name
    python = home / "bin" / "python"
    marker = home / ".installed"
    wanted = "\n".join(requirements)
    if python.exists() and marker.exists() and marker.read_text() == wanted:
        return python
    print(f"installing {', '.join(requirements)} into {home}", flush=True)
    shutil.rmtree(home, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(home)], check=True)
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *requirements],
        check=True,
    )
    marker.write_text(wanted)
    return python
