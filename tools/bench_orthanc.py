"""The peer in `make bench`: Orthanc doing imx's job on the same machine, in the same run.

C-STORE in (storescu, the same associations as imx gets), then a Lua `OnStoredInstance` that
anonymizes with Orthanc's `/anonymize` and forwards the copy by C-STORE to a `storescp`, then deletes
what it stored: receive, de-identify, deliver. Two ways of doing that (`JOBS`), each Orthanc's fastest
we found for it: `stored-copy` stores the anonymized copy, as imx stores its de-identified one, and
sends it with a synchronous REST call; `straight` sends it from memory (`store-straight`) and never
stores it. Timed from the first C-STORE to the last file `storescp` wrote; Orthanc's CPU (and its
storescp's, apart) is read from /proc. It runs on a small burst (200 instances by default).

Until 8ba7ed6 (2026-12-05) the script sent with Lua's `SendToModality` and deleted with `Delete`: Orthanc queues
those into one job of up to 1,000 operations (its LuaJobManager) and rewrites that job's whole status
after every step, so its CPU per instance grew with the burst. Three bursts of 200, each way, the same
minutes of 2026-12-05 (14:33-14:36): `SendToModality` 31.2-33.2/s at 36.6-39.3 ms per instance; the
synchronous REST call 61.8-67.5/s at 14.7-16.1 ms; `store-straight` 93.7-97.5/s at 9.8-10.3 ms. The
REST call opens an association per instance, which costs the storescp more (2.4-2.9 ms against
0.8-1.2 ms), not Orthanc.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from tools.dicom_peers import DCMTK_ENV, start_orthanc, start_storescp
from tools.proc_cpu import cpu_seconds

# The ratios `make bench` grades imx by: Orthanc keeping a copy, as imx keeps its de-identified one
# until the partner has it. `straight` is reported beside it.
GRADED_JOB = "stored-copy"
STRAIGHT_JOB = "straight"
# Lua ignores what it stored itself (the copy, RequestOrigin 'Lua'). Every call is synchronous, so no
# job gathers operations (see above), and each instance's files are gone once its copy is delivered.
_ANONYMIZED = """
function OnStoredInstance(instanceId, tags, metadata, origin)
  if origin['RequestOrigin'] == 'Lua' then
    return
  end
  local anonymized = RestApiPost('/instances/' .. instanceId .. '/anonymize', '{}')
"""
JOBS = {
    GRADED_JOB: _ANONYMIZED
    + """  local stored = ParseJson(RestApiPost('/instances', anonymized))
  RestApiPost('/modalities/target/store', '{"Resources": ["' .. stored['ID'] .. '"], "Synchronous": true}')
  RestApiDelete('/instances/' .. stored['ID'])
  RestApiDelete('/instances/' .. instanceId)
end
""",
    STRAIGHT_JOB: _ANONYMIZED
    + """  RestApiPost('/modalities/target/store-straight', anonymized)
  RestApiDelete('/instances/' .. instanceId)
end
""",
}


def storescu(files: list[Path], port: int, called_ae: str) -> None:
    subprocess.run(
        ["storescu", "-xe", "-aet", "BENCH", "-aec", called_ae, "--max-pdu", "131072", "127.0.0.1", str(port)]
        + [str(f) for f in files],
        check=True,
        capture_output=True,
        env={**os.environ, **DCMTK_ENV},
    )


def storage_folders(storage: Path) -> None:
    """Orthanc's storage folders (two levels of two hex digits), made before it starts: Debian's Orthanc
    can die creating them while two threads store (boost `create_directory`: "No such file or
    directory", seen in a `make bench` of 2026-12-02), and the bench then waited out its timeout."""
    for first in range(256):
        for second in range(256):
            (storage / f"{first:02x}" / f"{second:02x}").mkdir(parents=True, exist_ok=True)


def orthanc_exchanges(
    files: list[Path],
    associations: int = 2,
    bursts: int = 1,
    timeout_s: float = 600.0,
    jobs: Sequence[str] = (GRADED_JOB,),
) -> Iterator[tuple[str, dict[str, float]]]:
    """(job, `orthanc_exchange`) `bursts` times for each of `jobs` in turn, each with a new Orthanc (a new
    index, its own storescp), all over one storage tree: making its 65,536 folders right after a run took
    ~19 s of the kernel's CPU on this machine's ext4 (`perf`: its inode allocator stepping over recently
    deleted inodes), so it is done once, not once per burst or per job (`make bench` with three bursts,
    one run each: 107 s, then 95 s). Orthanc deletes what it stored of each instance as it goes, so a
    burst finds the folders empty."""
    with tempfile.TemporaryDirectory(prefix="imx-bench-orthanc-storage-") as tmp:
        storage = Path(tmp)
        storage_folders(storage)
        for job in jobs:
            for _ in range(bursts):
                yield job, orthanc_exchange(files, associations, timeout_s, storage=storage, job=job)


def orthanc_exchange(
    files: list[Path],
    associations: int = 2,
    timeout_s: float = 600.0,
    storage: Path | None = None,
    job: str = GRADED_JOB,
) -> dict[str, float]:
    """Instances per second (first C-STORE → last file storescp wrote) and CPU milliseconds per
    instance of the Orthanc process alone and of its storescp, for `files`, done the `job` way (a key of
    `JOBS`). `storage`: a folder with Orthanc's fan-out folders made (`storage_folders`), else one is
    made under the run's own."""
    if job not in JOBS:
        raise ValueError(f"unknown Orthanc job {job!r}: one of {', '.join(JOBS)}")
    with tempfile.TemporaryDirectory(prefix="imx-bench-orthanc-") as tmp:
        root = Path(tmp)
        receiver = start_storescp(root / "received")
        script = root / "exchange.lua"
        script.write_text(JOBS[job])
        if storage is None:
            storage = root / "orthanc" / "storage"
            storage_folders(storage)
        orthanc = start_orthanc(
            root / "orthanc",
            modalities={"target": (receiver.ae_title, "127.0.0.1", receiver.port)},
            lua_scripts=[script],
            dicomweb=False,
            extra={"StorageDirectory": str(storage), "IndexDirectory": str(root / "orthanc" / "index")},
        )
        try:
            # The PID start_process recorded is Orthanc's own (no shell or wrapper in between).
            cpu_before = cpu_seconds(orthanc.process.pid), cpu_seconds(receiver.process.pid)
            started = time.time()  # wall clock, as the files' modification times
            chunks = [files[i::associations] for i in range(associations)]
            senders = [
                threading.Thread(target=storescu, args=(chunk, orthanc.dicom_port, orthanc.ae_title))
                for chunk in chunks
            ]
            for sender in senders:
                sender.start()
            deadline = time.monotonic() + timeout_s
            while receiver.count() < len(files) and time.monotonic() < deadline:
                if not orthanc.process.alive():  # its folder goes with this function: say why here
                    raise RuntimeError(f"Orthanc exited during the exchange:\n{orthanc.process.log_tail(5)}")
                time.sleep(0.05)
            received = receiver.files()
            elapsed = max((p.stat().st_mtime for p in received), default=started) - started
            for sender in senders:
                sender.join()
            cpu = cpu_seconds(orthanc.process.pid) - cpu_before[0]
            receiver_cpu = cpu_seconds(receiver.process.pid) - cpu_before[1]
            arrived = len(received)
        finally:
            orthanc.stop()
            receiver.stop()
    return {
        "instances": arrived,
        "per_s": round(arrived / elapsed, 1) if elapsed > 0 else 0.0,
        "cpu_ms_per_instance": round(cpu * 1000 / max(arrived, 1), 1),
        "storescp_cpu_ms_per_instance": round(receiver_cpu * 1000 / max(arrived, 1), 1),
    }
