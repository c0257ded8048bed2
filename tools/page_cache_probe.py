"""CPU to write 512 MB into the page cache, to touch 512 MB of new anonymous memory, and to make the first
write into a mapped sparse file of Kafka's index size (10 MiB by default, the devstack's 1 MiB).

`python -m tools.page_cache_probe [FILE]` (FILE on the file system to probe; default var/page-cache-probe.bin,
removed after). On a virtual machine whose balloon returns freed memory to the host, writing into pages
the guest has not used lately costs more than into pages freed a moment ago (README, the full-`var/`
slowdown): run it between benchmarks to see which the next run will get. A kernel that reads a whole sparse
file in as zeroed pages at the first fault in its mapping makes each new Kafka index cost milliseconds
(tools/devstack/servers.py, BROKER_INDEX_BYTES); one that reads around the fault costs microseconds.

It also times making new files (every received instance is one: ingest's, deid's splice record, the
partner's copy) and says whether the file system keeps a journal. ext4 without one (this project's
2-core machines) checks, for every new inode, that the free inode it picks was not deleted in the last
minute (six, while its inode-table block is unwritten), walking the block device's cached buffers to
read that inode's deletion time (README, "the full-`var/` slowdown", the third effect). The probe's own
2,000 files, deleted after, are such inodes: on such a file system the files made in that folder's group
over the next minutes pay for them too (repeated probes here: 420, 670, 700 us), so leave a minute or more
between the probe and a benchmark whose figures matter.
"""

from __future__ import annotations

import mmap
import os
import resource
import shutil
import sys
import time
from pathlib import Path

from tools.devstack.servers import BROKER_INDEX_BYTES

SIZE = 512 << 20
PAGE = 4096
CHUNK = 1 << 20
KAFKA_INDEX_BYTES = 10 << 20  # Kafka's own default `log.index.size.max.bytes`


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


def sparse_map_first_write_s(path: Path, size: int) -> float:
    """CPU s of the first write into a shared mapping of a new sparse file of `size` bytes, as Kafka makes
    and maps each segment's offset and time index; the file is removed after."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.ftruncate(fd, size)
        with mmap.mmap(fd, size) as mapped:
            cpu = _cpu_s()
            mapped[0:8] = b"\x00\x00\x00\x01\x00\x00\x00\x02"  # one offset-index entry
            return _cpu_s() - cpu
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)


def sparse_map_median_ms(path: Path, size: int, runs: int = 5) -> float:
    """The median of `runs` of `sparse_map_first_write_s`, in ms (one fault alone varies by 2x from run to run)."""
    times = sorted(sparse_map_first_write_s(path, size) for _ in range(runs))
    return times[runs // 2] * 1000


def file_create_us(folder: Path, count: int = 2000) -> float:
    """CPU us per new empty file (exclusive create, as ingest makes each received instance's file) in a
    new folder `folder`, removed after with what it holds."""
    folder.mkdir(parents=True)
    try:
        cpu = _cpu_s()
        for n in range(count):
            os.close(os.open(folder / f"f{n}", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
        return (_cpu_s() - cpu) / count * 1e6
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def ext4_journal(path: Path, sys_root: Path = Path("/sys")) -> bool | None:
    """Whether the ext4 file system holding `path` keeps a journal; None when it is not ext4 (or this
    cannot tell). The kernel names the journal's thread in /sys/fs/ext4/<device>/journal_task, `<none>`
    without one."""
    device = os.stat(path).st_dev
    try:
        block = (sys_root / "dev" / "block" / f"{os.major(device)}:{os.minor(device)}").resolve().name
        task = (sys_root / "fs" / "ext4" / block / "journal_task").read_text().strip()
    except OSError:
        return None
    return task != "<none>"


def main(argv: list[str]) -> int:
    path = Path(argv[0]) if argv else Path(os.environ.get("IMX_VAR_DIR", "var")) / "page-cache-probe.bin"
    path.parent.mkdir(parents=True, exist_ok=True)
    anon = anonymous_touch_s()
    written = file_write_s(path)
    index_default, index_devstack = (sparse_map_median_ms(path, n) for n in (KAFKA_INDEX_BYTES, BROKER_INDEX_BYTES))
    created = file_create_us(path.with_name(path.name + ".files"))
    journal = {True: "ext4 with a journal", False: "ext4 without a journal", None: "not ext4, or not known"}[
        ext4_journal(path.parent)
    ]
    print(
        f"anonymous 512 MB: {anon[0]:.3f} s CPU ({anon[1]:.3f} s); "
        f"page cache 512 MB: {written[0]:.3f} s CPU ({written[1]:.3f} s); "
        f"first write into a mapped sparse index, {KAFKA_INDEX_BYTES >> 20} MiB: {index_default:.2f} ms CPU, "
        f"{BROKER_INDEX_BYTES >> 20} MiB: {index_devstack:.2f} ms; "
        f"a new file: {created:.0f} us CPU ({journal})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
