"""Central gateways: which partner workers to start and stop when the partner list changes (pure)."""

from __future__ import annotations

from services.gateway.central import central_group, plan


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
