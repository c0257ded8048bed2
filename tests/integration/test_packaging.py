"""The wheel carries what the services load at run time, not only the Python modules."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def test_the_wheel_carries_the_de_identification_tables(tmp_path: Path) -> None:
    leftovers = [ROOT / "build", ROOT / "imx.egg-info"]
    existed = {path for path in leftovers if path.exists()}
    try:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "--quiet",
                "--no-deps",
                "--no-build-isolation",
                "-w",
                str(tmp_path),
                str(ROOT),
            ],
            check=True,
            capture_output=True,
            timeout=300,
            cwd=tmp_path,
        )
    finally:
        for path in leftovers:
            if path not in existed:
                shutil.rmtree(path, ignore_errors=True)  # setuptools builds in the source tree
    [wheel] = tmp_path.glob("imx-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for table in ROOT.glob("services/deid/data/*.csv"):
        assert f"services/deid/data/{table.name}" in names
    assert "services/deid/engine/raw_engine.py" in names
    for asset in ROOT.glob("services/audit/ui/*.*"):
        if asset.suffix != ".py":
            assert f"services/audit/ui/{asset.name}" in names, "the analysts' page is served from the wheel too"
