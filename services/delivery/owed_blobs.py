"""What the blob lifecycle keeps however old it is, read one way by the delivery service's timer and by
`imx blobs usage|gc`: the objects the pipeline's dead letters name (services/common/dead_letter_blobs.py)
and those a partner's gateway has not reported stored (delivered.py). Either read failing raises: nothing
is judged unowed on a guess. The dead letters are read first: the slower read, so what partners are owed
is as fresh as it can be when the collection deletes."""

from __future__ import annotations

from collections.abc import Callable

from pymongo.database import Database

from services.common.dead_letter_blobs import DeadLetterBlobs
from services.common.dead_letter_handling import discarded_positions
from services.common.dead_letter_topic import DeadLetterTopic
from services.common.service_access import kafka_client_config
from services.common.settings import ServiceSettings
from services.common.topics import Topics
from services.delivery.delivered import DeliveredObjects


class OwedBlobs:
    def __init__(self, delivered: DeliveredObjects, dead_letters: Callable[[], set[str]]) -> None:
        self._delivered = delivered
        self._dead_letters = dead_letters

    @classmethod
    def of(cls, settings: ServiceSettings, delivered: DeliveredObjects, db: Database) -> OwedBlobs:
        """ValueError or OSError when the settings' Kafka sign-in cannot be read (kafka_client_config)."""
        topic = DeadLetterTopic(
            settings.kafka_bootstrap, Topics(settings.topic_prefix).dead_letter, kafka_client_config(settings)
        )
        return cls(delivered, DeadLetterBlobs(topic, discarded=lambda: discarded_positions(db)))

    def __call__(self) -> set[str]:
        named = self._dead_letters()
        return named | self._delivered.unstored_blobs()
