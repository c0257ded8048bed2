"""Which temp files a starting gateway may delete: its host's, made by a process that is gone. A process
is its id and start time: a gateway is process 1 on every start of its container."""

from __future__ import annotations

from pathlib import Path

from services.gateway.dimse_store import padded_copy
from services.gateway.scratch_files import _host_prefix, _process_token, abandoned

HOST = "fetch-node-a-"  # host names have dashes too
RUNNING = {(202, 5000), (1, 9000)}


def _alive(pid: int, started: int) -> bool:
    return (pid, started) in RUNNING


def test_only_this_hosts_files_of_processes_gone_are_abandoned() -> None:
    names = [
        "fetch-node-a-101.4000-k2j3h4.dcm",  # gone
        "fetch-node-a-202.5000-x8y9z0.dcm",  # running
        "fetch-node-a-202.4100-x8y9z0.dcm",  # its id reused since: gone
        "fetch-node-a-1.8000-aaaaaa.dcm",  # process 1 of the container's last start: gone
        "fetch-node-a-1.9000-bbbbbb.dcm",  # this process: never
        "fetch-node-b-101.4000-k2j3h4.dcm",  # another host sharing the folder: its processes mean nothing here
        "fetch-node-a-101-k2j3h4.dcm",  # an earlier version's name: not provably abandoned
        "fetch-node-a-101.4000-k2j3h4.dcm.part",  # not ours
        "stored.sqlite3",
    ]
    assert abandoned(names, HOST, _alive, me="1.9000") == [
        "fetch-node-a-101.4000-k2j3h4.dcm",
        "fetch-node-a-202.4100-x8y9z0.dcm",
        "fetch-node-a-1.8000-aaaaaa.dcm",
    ]


def test_nothing_is_abandoned_while_every_maker_runs() -> None:
    assert abandoned(["fetch-node-a-202.5000-k2j3h4.dcm"], HOST, _alive, me="1.9000") == []


def test_the_c_store_copies_are_named_so_a_later_start_removes_them(tmp_path: Path) -> None:
    """The padded and inflated copies were named `.<fetched>.padded` / `.inflated`: a gateway killed while
    sending one (an inflated copy can be GiBs) left it for good."""
    source = tmp_path / "fetched.dcm"
    source.write_bytes(b"\x01" * 200)
    copy = padded_copy(source, 0)
    as_if_gone = copy.name.replace(_process_token(), "999999.1")  # the same file, its maker since killed
    assert abandoned([as_if_gone], _host_prefix(), _alive, me=_process_token()) == [as_if_gone]
    assert copy.read_bytes() == b"\x01" * 200 + b"\x00"
