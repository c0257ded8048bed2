"""The wheel carries what the services load at run time, not only the Python modules."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def test_the_wheel_carries_the_de_identification_tables(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(tmp_path),
         str(ROOT)],
        check=True, capture_output=True, timeout=300, cwd=tmp_path,
    )
    [wheel] = tmp_path.glob("imx-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for table in ROOT.glob("services/deid/data/*.csv"):
        assert f"services/deid/data/{table.name}" in names
    assert "services/deid/engine/raw_engine.py" in names
