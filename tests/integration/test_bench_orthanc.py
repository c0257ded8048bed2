"""The peer `make bench` measures imx against: Orthanc, each way the bench drives it, delivers every
instance of a burst to its storescp and keeps nothing once it has."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tools.bench_corpus import bench_data
from tools.bench_orthanc import JOBS, orthanc_exchange

pytestmark = pytest.mark.skipif(
    shutil.which("Orthanc") is None or shutil.which("storescu") is None,
    reason="Orthanc and dcmtk are installed by make setup",
)


@pytest.mark.parametrize("job", sorted(JOBS))
def test_every_instance_of_the_burst_reaches_the_pacs_and_orthanc_keeps_none(job: str, tmp_path: Path) -> None:
    files = bench_data(tmp_path / "corpus", 4)
    storage = tmp_path / "storage"
    # One association: Debian's Orthanc can fail making its storage folders from two threads at once
    # (bench_orthanc.storage_folders); the bench makes them all first, which takes seconds.
    figures = orthanc_exchange(files, associations=1, timeout_s=120, storage=storage, job=job)
    assert figures["instances"] == 4
    assert figures["per_s"] > 0 and figures["cpu_ms_per_instance"] > 0
    assert [p for p in storage.rglob("*") if p.is_file()] == [], "the original and its copy are deleted"


def test_an_unknown_job_is_refused_before_anything_starts(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown Orthanc job 'lua-queue'"):
        orthanc_exchange([], job="lua-queue", storage=tmp_path)
