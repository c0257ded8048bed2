"""Central gateways: which partner workers to start and stop when the partner list changes (pure)."""

from __future__ import annotations

import threading
import time

from services.gateway.central import CentralGateways, CentralGatewaySettings, central_group, plan
from services.gateway.worker import Counters


def test_partners_with_an_endpoint_get_a_worker_and_removed_ones_lose_it() -> None:
    running = {"a": "file:///a", "b": "dicom://PACS@h:104"}
    wanted = {"b": "dicom://PACS@h:104", "c": "https://c.example/dicomweb"}
    assert plan(running, wanted) == (["a"], ["c"])


def test_a_changed_endpoint_restarts_the_worker_and_nothing_changed_is_left_alone() -> None:
    running = {"a": "file:///a", "b": "file:///b"}
    assert plan(running, {"a": "file:///elsewhere", "b": "file:///b"}) == (["a"], ["a"])
    assert plan(running, dict(running)) == ([], [])


def test_the_central_gateway_reads_in_a_group_of_its_own_outside_the_partners_groups() -> None:
    assert central_group("research-lab") == "imx-central-gateway.research-lab"
    assert not central_group("research-lab").startswith("research-lab."), "the partner's own groups are not its"
    assert central_group("research-lab", "prod.") == "prod.imx-central-gateway.research-lab"


class _Partner:
    def __init__(self, partner_id: str, endpoint: str) -> None:
        self.partner_id, self.endpoint = partner_id, endpoint


class _Partners:
    def __init__(self, answering: threading.Event | None = None) -> None:
        self.answering = answering

    def list(self) -> list[_Partner]:
        if self.answering is not None:
            self.answering.wait()  # a database that does not answer
        return [_Partner("a", "file:///a"), _Partner("b", "file:///b")]


class _Worker:
    def __init__(self, partner_id: str, endpoint: str, storing: threading.Event | None = None) -> None:
        self.endpoint, self.running, self.counters = endpoint, False, Counters()
        self.storing = storing  # set: a store in flight until it is cleared

    def start(self) -> None:
        self.running = True

    def request_stop(self) -> None:
        self.running = self.storing is not None and self.storing.is_set()

    def stop(self, timeout_s: float = 30.0) -> None:
        self.request_stop()

    @property
    def alive(self) -> bool:
        return self.running


def test_pausing_the_central_gateways_stops_every_worker_until_resumed() -> None:
    """`imx pause gateways` answered "paused" while every partner's worker went on storing."""
    made: list[_Worker] = []

    def worker(partner_id: str, endpoint: str) -> _Worker:
        made.append(_Worker(partner_id, endpoint))
        return made[-1]

    gateways = CentralGateways(_Partners(), CentralGatewaySettings(), worker)  # type: ignore[arg-type]
    gateways.sync()
    assert [w.running for w in made] == [True, True]
    gateways.set_paused(True)
    assert not any(w.running for w in made) and gateways.snapshot().paused
    gateways.sync()  # the next look at the partner list starts nothing while paused
    assert not any(w.running for w in made) and not gateways.workers
    gateways.set_paused(False)
    gateways.sync()
    assert len(made) == 4 and [w.running for w in made[2:]] == [True, True] and not gateways.snapshot().paused


def test_a_pause_is_not_held_up_by_a_database_that_does_not_answer() -> None:
    answering = threading.Event()
    gateways = CentralGateways(_Partners(answering), CentralGatewaySettings(), _Worker)  # type: ignore[arg-type]
    looking = threading.Thread(target=gateways.sync, daemon=True)
    looking.start()
    started = time.monotonic()
    gateways.set_paused(True)
    assert time.monotonic() - started < 2 and gateways.snapshot().paused
    answering.set()
    looking.join(5)
    assert not gateways.workers, "the look that was waiting starts nothing once paused"


def test_a_worker_still_storing_keeps_the_gateways_from_saying_paused_until_it_ends() -> None:
    storing = threading.Event()
    storing.set()
    made: list[_Worker] = []

    def worker(partner_id: str, endpoint: str) -> _Worker:
        made.append(_Worker(partner_id, endpoint, storing))
        return made[-1]

    gateways = CentralGateways(_Partners(), CentralGatewaySettings(), worker, stop_timeout_s=0.1)  # type: ignore[arg-type]
    gateways.sync()
    gateways.set_paused(True)
    assert not gateways.snapshot().paused, "a store still in flight: not paused yet"
    storing.clear()
    for w in made:
        w.request_stop()  # the store ends
    assert gateways.snapshot().paused
