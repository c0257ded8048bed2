"""The text summary `make profile` writes beside its flame graphs, var/profile/summary.txt: for each
profiled process, its sample count and the functions that held the most samples themselves (self time,
the leaf of each stack), summed over their lines. A flame graph shows the shape; this says in a few
lines where the time went, for a note or a diff between two runs.

Input is collapsed stacks (`frame;frame;...;leaf count`), as py-spy's raw format and async-profiler's
collapsed output write them."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

SUMMARY_NAME = "summary.txt"
TOP = 12
_LINE_NUMBER = re.compile(r":\d+\)$")  # "fn (path/to/file.py:38)" → "fn (path/to/file.py)"
_PACKAGE_PATH = re.compile(r"\(\S*?/site-packages/")  # a library's frame named from its package on


def function_of(frame: str, root: str = "") -> str:
    """A frame without its line number, and with its path from the package (or the repository) on."""
    name = _LINE_NUMBER.sub(")", frame)
    name = _PACKAGE_PATH.sub("(", name)
    return name.replace(f"({root}/", "(") if root else name


def self_samples(stacks: Iterable[str], root: str = "") -> tuple[int, Counter[str]]:
    """(all samples, samples per function at the top of its stack). Lines that are not `stack count`
    (blank, or cut short by a sampler stopped mid-write) are skipped."""
    total, by_function = 0, Counter[str]()
    for line in stacks:
        stack, _, count = line.rstrip("\n").rpartition(" ")
        if not stack or not count.isdigit():
            continue
        samples = int(count)
        total += samples
        by_function[function_of(stack.rpartition(";")[2], root)] += samples
    return total, by_function


def summary_lines(name: str, stacks: Iterable[str], root: str = "", top: int = TOP) -> list[str]:
    total, by_function = self_samples(stacks, root)
    if not total:
        return [f"{name}: no samples"]
    lines = [f"{name}: {total} samples; the functions with the most of their own:"]
    lines += [f"  {100 * n / total:5.1f}%  {function}" for function, n in by_function.most_common(top)]
    return lines


def write_summary(folder: Path, root: str = "", top: int = TOP) -> Path:
    """summary.txt in `folder`, from every collapsed-stack file there (<name>.txt), in name order."""
    lines: list[str] = []
    for path in sorted(folder.glob("*.txt")):
        if path.name == SUMMARY_NAME:
            continue
        with path.open(encoding="utf-8", errors="replace") as stacks:
            lines += [*summary_lines(path.stem, stacks, root, top), ""]
    out = folder / SUMMARY_NAME
    out.write_text("\n".join(lines), encoding="utf-8")
    return out
