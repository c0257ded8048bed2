"""De-identified output is as valid as its input: dciodvfy (dicom3tools) reports no new errors."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from services.common.dicom.part10 import dataset_to_bytes
from services.common.dicom.synthetic import generate_study
from services.deid.engine import BASIC, RESEARCH, Option, Profile, deidentify

from .builders import KEY, ct_dataset, every_attribute_dataset, to_bytes

pytestmark = pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (dicom3tools) not installed")

EVERYTHING = Profile(
    "everything", options=frozenset(o for o in Option if o is not Option.RETAIN_LONGITUDINAL_FULL_DATES)
)


def _errors(data: bytes, folder: Path, name: str) -> set[str]:
    path = folder / name
    path.write_bytes(data)
    run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return {line.strip() for line in (run.stdout + run.stderr).splitlines() if line.strip().startswith("Error")}


@pytest.mark.parametrize("modality", ["CT", "MR", "CR", "DX"])
@pytest.mark.parametrize("profile", [BASIC, RESEARCH, EVERYTHING], ids=lambda p: p.name)
def test_no_new_errors_on_synthetic_instances(modality: str, profile: Profile, tmp_path: Path) -> None:
    data = dataset_to_bytes(next(generate_study(3, modality, 1, "VALID")))  # type: ignore[arg-type]
    before = _errors(data, tmp_path, "in.dcm")
    after = _errors(deidentify(data, profile, KEY).data, tmp_path, "out.dcm")
    assert after - before == set()


def test_no_new_errors_on_the_small_ct(tmp_path: Path) -> None:
    data = to_bytes(ct_dataset())
    assert _errors(deidentify(data, BASIC, KEY).data, tmp_path, "out.dcm") - _errors(data, tmp_path, "in.dcm") == set()


def test_no_new_errors_with_every_table_attribute(tmp_path: Path) -> None:
    data = to_bytes(every_attribute_dataset())
    new = _errors(deidentify(data, BASIC, KEY).data, tmp_path, "out.dcm") - _errors(data, tmp_path, "in.dcm")
    assert new == set()
