"""CPU to write 512 MB into the page cache, and to touch 512 MB of new anonymous memory.

`python -m tools.page_cache_probe [FILE]` (FILE on the file system to probe; default var/page-cache-probe.bin,
removed after). On a virtual machine whose balloon returns freed memory to the host, writing into pages
the guest has not used lately costs more than into pages freed a moment ago (README, the full-`var/`
slowdown): run it between benchmarks to see which the next run will get.
"""

from __future__ import annotations

import mmap
import os
import resource
import sys
import time
from pathlib import Path

SIZE = 512 << 20
PAGE = 4096
CHUNK = 1 << 20


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def anonymous_touch_s(size: int = SIZE) -> tuple[float, float]:
    """(CPU s, wall s) to touch every page of `size` bytes of new anonymous memory."""
    cpu, wall = _cpu_s(), time.monotonic()
    memory = mmap.mmap(-1, size)
    try:
        for offset in range(0, size, PAGE):
            memory[offset] = 1
    finally:
        memory.close()
    return _cpu_s() - cpu, time.monotonic() - wall


def file_write_s(path: Path, size: int = SIZE) -> tuple[float, float]:
    """(CPU s, wall s) to write `size` bytes to a new file, without fsync; the file is removed after."""
    block = b"x" * CHUNK
    cpu, wall = _cpu_s(), time.monotonic()
    try:
        with path.open("wb") as file:
            for _ in range(size // CHUNK):
                file.write(block)
        return _cpu_s() - cpu, time.monotonic() - wall
    finally:
        path.unlink(missing_ok=True)


def main(argv: list[str]) -> int:
    path = Path(argv[0]) if argv else Path(os.environ.get("IMX_VAR_DIR", "var")) / "page-cache-probe.bin"
    path.parent.mkdir(parents=True, exist_ok=True)
    anon = anonymous_touch_s()
    written = file_write_s(path)
    print(
        f"anonymous 512 MB: {anon[0]:.3f} s CPU ({anon[1]:.3f} s); "
        f"page cache 512 MB: {written[0]:.3f} s CPU ({written[1]:.3f} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
