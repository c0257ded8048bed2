"""Study completeness: when a study has had no new instance for the quiet period, the partner's feed
gets a StudyComplete with the manifest of what was delivered (count, SOP Instance UIDs, SHA-256 of
each object), which the partner's gateway checks against what its PACS accepted.

The sweep runs beside the consumer loop. A study that receives more instances after its StudyComplete
is announced again, with the larger manifest (a new event id: the id is made from the manifest).
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable, Sequence

from services.common.events import event_id, event_message, now_ms
from services.common.lanes import lane_for, least_urgent
from services.common.messages import OutgoingMessage
from services.common.topics import Topics
from services.delivery.delivered import DeliveredInstance, DeliveredObjects
from services.proto_gen.imx.v1 import events_pb2

log = logging.getLogger(__name__)


def _manifest_digest(manifest: Sequence[DeliveredInstance]) -> str:
    """What the manifest holds, in no particular order: a corrected instance (same count, another object)
    makes another StudyComplete. With the count alone the new manifest had the earlier one's id, and a
    partner (and audit) that drops repeated ids dropped it."""
    entries = sorted(f"{i.sop_uid}:{i.sha256}" for i in manifest)
    return hashlib.sha256("\n".join(entries).encode()).hexdigest()


def study_complete(
    partner_id: str, study_uid: str, manifest: Sequence[DeliveredInstance], topics: Topics, clock: Callable[[], int]
) -> OutgoingMessage:
    """The StudyComplete message for a manifest (pure; the same manifest gives the same event id)."""
    event = events_pb2.StudyComplete(
        meta=events_pb2.EventMeta(
            event_id=event_id("study-complete", partner_id, study_uid, str(len(manifest)), _manifest_digest(manifest)),
            occurred_at_ms=clock(),
        ),
        partner_id=partner_id,
        study_instance_uid=study_uid,
        count=len(manifest),
        instances=[
            events_pb2.ManifestEntry(
                series_instance_uid=i.series_uid,
                sop_instance_uid=i.sop_uid,
                sha256=i.sha256,
                size=i.size,
                delivery_id=i.delivery_id,
            )
            for i in manifest
        ],
        priority=least_urgent(i.priority for i in manifest),  # type: ignore[arg-type]
    )
    # On the lane its instances took, keyed by study like them: the gateway reads it after them.
    return event_message(topics.lane(topics.partner(partner_id), lane_for(event.priority)), event, study_uid)


class CompletenessSweep:
    def __init__(
        self,
        delivered: DeliveredObjects,
        publish: Callable[[list[OutgoingMessage]], None],
        topics: Topics,
        quiet_s: float,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self._delivered = delivered
        self._publish = publish
        self._topics = topics
        self._quiet_ms = int(quiet_s * 1000)
        self._clock = clock

    def sweep_once(self) -> int:
        """Announce every quiet study; returns how many were announced."""
        announced = 0
        for partner_id, study_uid, last_ms in self._delivered.quiet_studies(self._clock() - self._quiet_ms):
            manifest = self._delivered.study(partner_id, study_uid)
            if manifest:
                # Published before it is settled: a crash in between announces the study again, with
                # the same event id, which the gateway treats as the same check.
                self._publish([study_complete(partner_id, study_uid, manifest, self._topics, self._clock)])
                announced += 1
            self._delivered.settle(partner_id, study_uid, last_ms)
        return announced

    def run(self, stop: threading.Event, interval_s: float) -> None:
        while not stop.wait(interval_s):
            try:
                announced = self.sweep_once()
            except Exception as error:  # the database or broker is away: try again next round
                log.warning("completeness sweep failed", extra={"error": type(error).__name__})
                continue
            if announced:
                log.info("studies announced complete", extra={"count": announced})
