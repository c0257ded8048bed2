"""What the blob lifecycle keeps however old it is, read one way by the delivery service's timer and by
`imx blobs usage|gc`: the objects a partner's gateway has not reported stored (delivered.py) and those
the pipeline's dead letters name (services/common/dead_letter_blobs.py). Either read failing raises:
nothing is judged unowed on a guess."""

from __future__ import annotations

from collections.abc import Callable

from pymongo.database import Database

from services.common.dead_letter_blobs import DeadLetterBlobs
from services.common.service_access import kafka_client_config
from services.common.settings import ServiceSettings
from services.common.topics import Topics
from services.delivery.delivered import DeliveredObjects


class OwedBlobs:
    def __init__(self, delivered: DeliveredObjects, dead_letters: Callable[[], set[str]]) -> None:
        self._delivered = delivered
        self._dead_letters = dead_letters

    @classmethod
    def of(cls, settings: ServiceSettings, db: Database) -> OwedBlobs:
        topic = Topics(settings.topic_prefix).dead_letter
        return cls(
            DeliveredObjects(db), DeadLetterBlobs(settings.kafka_bootstrap, topic, kafka_client_config(settings))
        )

    def __call__(self) -> set[str]:
        return self._delivered.unstored_blobs() | self._dead_letters()
