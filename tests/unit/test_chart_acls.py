"""The chart's copy of the services' Kafka ACLs (charts/imx/files/service-acls.json, for Strimzi
KafkaUsers) is what services/common/service_access.py declares: regenerate it with
`python -m tools.chart_acls` after changing the declaration."""

from __future__ import annotations

from tools.chart_acls import FILE, render


def test_the_charts_acl_file_matches_the_declaration() -> None:
    assert FILE.read_text() == render(), "stale: run `python -m tools.chart_acls`"
