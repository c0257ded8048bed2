"""Deliveries as the delivery stage records them, for the tests of what partners were sent."""

from __future__ import annotations

from services.delivery.delivered import DeliveredInstance


def delivered_item(
    n: int, partner: str = "lab", study: str = "2.25.100", at_ms: int = 1_000, delivery_id: str = ""
) -> DeliveredInstance:
    """Instance `n` of the study's one series, delivered at `at_ms + n`, ingested 100 ms before."""
    return DeliveredInstance(
        partner_id=partner,
        study_uid=study,
        series_uid=f"{study}.1",
        sop_uid=f"{study}.1.{n}",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        sha256=f"{n:064x}",
        size=500 + n,
        delivery_id=delivery_id or f"d{n}",
        delivered_at_ms=at_ms + n,
        ingested_at_ms=at_ms + n - 100,
    )
