"""One de-identification tool over a list of files, timed, on one core.

tools/bench_deid.py runs this script with each tool's own Python: imx with the project's, dicognito
and pydicom's deid each with its own benchmark virtual environment (they are not project
dependencies). Only the loop is timed (read file -> de-identify -> write file); imports and one
warm-up file (imx compiles its profile, deid parses its recipe) are not. Standard library only,
apart from the tool itself. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

Process = Callable[[Path, Path], None]


def imx(profile: str) -> Process:
    from services.deid.engine import BUILTIN_PROFILES
    from services.deid.files import deidentify_file

    chosen = BUILTIN_PROFILES[profile]
    key = bytes(range(32))

    def process(src: Path, dst: Path) -> None:
        # What `imx deid` runs; deidentify ends with the leak check: a leak raises, nothing is written.
        deidentify_file(src, dst, chosen, key)

    return process


def dicognito(_profile: str) -> Process:
    import pydicom
    from dicognito.anonymizer import Anonymizer

    anonymizer = Anonymizer(seed="imx-bench")

    def process(src: Path, dst: Path) -> None:
        ds = pydicom.dcmread(src)
        anonymizer.anonymize(ds)
        ds.save_as(dst)

    return process


def deid(_profile: str) -> Process:
    from deid.config import DeidRecipe
    from deid.dicom import replace_identifiers

    recipe = DeidRecipe()  # the package's default recipe (deid.dicom)

    def process(src: Path, dst: Path) -> None:
        [ds] = replace_identifiers([str(src)], deid=recipe, save=False, remove_private=True)
        ds.save_as(dst)

    return process


TOOLS: dict[str, Callable[[str], Process]] = {"imx": imx, "dicognito": dicognito, "deid": deid}
DISTRIBUTIONS = {"dicognito": "dicognito", "deid": "deid"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tool", required=True, choices=sorted(TOOLS))
    parser.add_argument("--files", type=Path, required=True, help="a text file: one input path per line")
    parser.add_argument("--out", type=Path, required=True, help="an empty folder for the outputs")
    parser.add_argument("--cpu", type=int, required=True)
    parser.add_argument("--profile", default="basic")
    args = parser.parse_args()
    os.sched_setaffinity(0, {args.cpu})
    files = [Path(line) for line in args.files.read_text().splitlines() if line]
    process = TOOLS[args.tool](args.profile)
    process(files[0], args.out / "warm-up.dcm")
    failed = 0
    started = time.perf_counter()
    for index, src in enumerate(files):
        try:
            process(src, args.out / f"{index:06d}.dcm")
        except Exception:  # counted, not hidden: a tool that fails is not faster for it
            failed += 1
    seconds = time.perf_counter() - started
    print(
        json.dumps(
            {
                "tool": args.tool,
                "version": metadata.version(DISTRIBUTIONS[args.tool]) if args.tool in DISTRIBUTIONS else "this repo",
                "pydicom": metadata.version("pydicom"),
                "instances": len(files),
                "failed": failed,
                "seconds": round(seconds, 3),
                "per_s": round(len(files) / seconds, 1),
                "cpus": sorted(os.sched_getaffinity(0)),
            }
        )
    )


if __name__ == "__main__":
    main()
