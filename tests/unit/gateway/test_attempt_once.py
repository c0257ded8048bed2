"""One fetch-verify-store (services/gateway/worker.py `attempt_once`) when the gateway's own disk fails."""

from __future__ import annotations

from typing import Any, cast

from services.gateway.fetch import Fetcher
from services.gateway.targets import Store
from services.gateway.worker import attempt_once
from services.proto_gen.imx.v1 import events_pb2


class FullDisk:
    def fetch(self, delivery: events_pb2.PartnerDelivery) -> Any:
        raise OSError(28, "No space left on device")  # writing a large object into <state-dir>/incoming


def test_a_full_state_disk_is_waited_for_not_a_crash() -> None:
    """The OSError ended `imx gateway run` with a traceback; the partner can free the disk."""
    result, refused = attempt_once(cast(Fetcher, FullDisk()), cast(Store, None), events_pb2.PartnerDelivery())
    assert (result.ok, result.unavailable, result.status_detail, refused) == (False, True, "state-disk-error-28", False)
