"""The gateway fetches the next deliveries while it stores one (a small pool), and still stores,
reports and commits in order: counted requests and files, no timings."""

from __future__ import annotations

import threading
from pathlib import Path

from services.proto_gen.imx.v1 import events_pb2
from tests.integration.gateway.conftest import Partner, gateway_thread
from tests.waiting import wait_for

FETCH_AHEAD = 2  # GatewayOptions' default


def test_the_next_deliveries_are_fetched_while_the_first_is_still_being_fetched_and_all_are_stored_in_order(
    partner: Partner, ct_study: list, tmp_path: Path
) -> None:
    root = tmp_path / "received"
    root.mkdir()
    instances = ct_study[:6]
    first_path = partner.url_of(instances[0])
    seen_together: list[int] = []
    lock = threading.Lock()
    arrived: list[str] = []

    def hold_the_first(path: str) -> None:
        with lock:
            arrived.append(path)
        if path == first_path and not seen_together:
            # One at a time, the gateway would never ask for another before this answer: wait for
            # the requests of the deliveries after it instead.
            wait_for(lambda: len(arrived) >= FETCH_AHEAD + 1, 30, "the deliveries after the first to be fetched")
            seen_together.append(len(arrived))

    partner.server.before_answer = hold_the_first
    deliveries = partner.publish(instances, study_complete=True)
    with gateway_thread(partner.settings(f"file://{root}", idle_exit_s=2.0)) as (_stop, done):
        counters = done.result(timeout=90)

    assert seen_together and seen_together[0] >= FETCH_AHEAD + 1
    assert (counters.stored, counters.dead_lettered, counters.studies_complete) == (6, 0, 1)
    assert {p.name for p in root.rglob("*.dcm")} == {f"{i.sop}.dcm" for i in instances}
    assert partner.server.requests == len(instances)  # each fetched once
    assert not list((partner.state_dir / "incoming").iterdir())  # no fetched file left behind
    receipts = partner.receipts(7)
    stored = [r.delivery_id for r in receipts if r.status == events_pb2.STORE_STATUS_STORED]
    # One partition per study: stored and reported in the feed's order.
    assert stored == [d.meta.event_id for d in deliveries]


def test_a_delivery_already_stored_is_not_fetched_again_when_read_again(
    partner: Partner, ct_study: list, tmp_path: Path
) -> None:
    root = tmp_path / "received"
    root.mkdir()
    deliveries = partner.publish(ct_study[:3])
    with gateway_thread(partner.settings(f"file://{root}", idle_exit_s=2.0)) as (_stop, done):
        assert done.result(timeout=60).stored == 3
    requests = partner.server.requests
    partner.publish_again(deliveries)  # a replay upstream
    with gateway_thread(partner.settings(f"file://{root}", idle_exit_s=2.0)) as (_stop, done):
        counters = done.result(timeout=60)
    assert (counters.stored, counters.duplicates) == (0, 3)
    assert partner.server.requests == requests
