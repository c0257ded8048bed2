"""Throughput of deidentify on synthetic 512x512 16-bit CT: ``python -m services.deid.engine.benchmark``.

A script, not a test: timings belong in reports, not in assertions on a noisy machine.
"""

from __future__ import annotations

import argparse
import statistics
import time

from services.common.dicom.part10 import dataset_to_bytes
from services.common.dicom.synthetic import generate_study

from .deidentifier import deidentify
from .profile import BUILTIN_PROFILES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--iterations", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", default="basic", choices=sorted(BUILTIN_PROFILES))
    parser.add_argument("--modality", default="CT", choices=["CT", "MR"])
    args = parser.parse_args()
    # Sixteen patients, two instances each: per-patient work (patterns, shifts) is not all cached.
    instances = [dataset_to_bytes(ds) for seed in range(16) for ds in generate_study(seed, args.modality, 2, "BENCH")]
    profile = BUILTIN_PROFILES[args.profile]
    key = bytes(range(32))
    deidentify(instances[0], profile, key)  # compile the profile outside the timing
    rates = []
    for _ in range(args.rounds):
        start = time.perf_counter()
        for index in range(args.iterations):
            deidentify(instances[index % len(instances)], profile, key)
        rates.append(args.iterations / (time.perf_counter() - start))
    size = sum(map(len, instances)) // len(instances)
    print(
        f"{args.modality} {size // 1024} KB, profile {args.profile}: "
        f"median {statistics.median(rates):.0f} instances/s over {args.rounds} rounds of {args.iterations} "
        f"({', '.join(f'{r:.0f}' for r in rates)})"
    )


if __name__ == "__main__":
    main()
