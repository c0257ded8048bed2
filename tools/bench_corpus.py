"""The CT instances `make bench` (and `make bench-deid`) send: generated once per machine and kept in the
cache outside the checkout (`IMX_CACHE`, default ~/.cache/imx, beside the Kafka jars and FerretDB), not
under `var/`.

Under `var/` they went with every `make clean`, so each `make clean && make bench` generated 1 GB
again before its run (12.7 s of one core on the 2-core machine, 2026-12-05) and `make clean` deleted
2,000 more files, which a file system without a journal makes the next run's new files walk past
(README, Figures). They are the bench's input, not imx's state. The folder's name carries a digest of the
generator's source, so a change to how instances are made never reuses files made the old way.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from services.common.dicom import part10, synthetic
from services.common.dicom.part10 import dataset_to_bytes
from services.common.dicom.synthetic import plan_study, study_instances
from tools.devstack.servers import cache_dir

GENERATORS = (synthetic, part10)  # what decides the files' bytes


def generator_key(sources: list[bytes]) -> str:
    """A short digest of the generator's source files: the cache's folder changes with them."""
    digest = hashlib.sha256()
    for source in sources:
        digest.update(len(source).to_bytes(8, "big"))
        digest.update(source)
    return digest.hexdigest()[:12]


def corpus_folder(root: Path, instances: int, key: str) -> Path:
    return root / f"ct-{instances}-{key}"


def default_root() -> Path:
    return cache_dir() / "bench"


def bench_data(root: Path | None, instances: int, per_study: int = 100) -> list[Path]:
    """`instances` CT instances (deterministic, seed = study index) under `root` (default: the cache),
    generated the first time and reused after; a folder left half-written is made again."""
    sources = [Path(module.__file__ or "").read_bytes() for module in GENERATORS]
    folder = corpus_folder(root or default_root(), instances, generator_key(sources))
    done = folder / ".complete"
    if not done.exists():
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        written = 0
        study = 0
        while written < instances:
            count = min(per_study, instances - written)
            for ds in study_instances(plan_study(10_000 + study, "CT", count, "BENCH")):
                (folder / f"{written:06d}.dcm").write_bytes(dataset_to_bytes(ds))
                written += 1
            study += 1
        done.touch()
    return sorted(folder.glob("*.dcm"))
