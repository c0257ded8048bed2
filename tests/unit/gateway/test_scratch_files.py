"""Which temp files a starting gateway may delete: its host's, made by a process that is gone."""

from __future__ import annotations

import os

from services.gateway.scratch_files import abandoned

HOST = "fetch-node-a-"  # host names have dashes too


def test_only_this_hosts_files_of_dead_processes_are_abandoned() -> None:
    names = [
        "fetch-node-a-101-k2j3h4.dcm",  # dead
        "fetch-node-a-202-x8y9z0.dcm",  # alive
        f"fetch-node-a-{os.getpid()}-aaaaaa.dcm",  # this process: never
        "fetch-node-b-101-k2j3h4.dcm",  # another host sharing the folder: its pids mean nothing here
        "fetch-q1w2e3.dcm",  # an earlier version's name: not provably abandoned
        "fetch-node-a-101-k2j3h4.dcm.part",  # not ours
        "stored.sqlite3",
    ]
    assert abandoned(names, HOST, alive=lambda pid: pid == 202) == ["fetch-node-a-101-k2j3h4.dcm"]


def test_nothing_is_abandoned_while_every_maker_runs() -> None:
    assert abandoned(["fetch-node-a-101-k2j3h4.dcm"], HOST, alive=lambda pid: True) == []
