"""The DeadLetterAdmin gRPC servicer: what no stage could process (the dead-letter topic), listed,
shown and replayed to where it came from once the defect that sent it there is fixed, or discarded.

Only the headers the bus writes (services/common/bus.py dead_letter_for) are shown, never a message's
value or key: those may carry PHI. A replay publishes the original value and headers (without the
dead-letter ones) to the source topic and is recorded in `dead_letter_replays` under
`<partition>:<offset>`, so that a second replay of the same dead letter is a deliberate one (`force`).
Replays are harmless to repeat anyway: every stage is idempotent by event id. A discarded letter stays on
the topic until its retention, but the blob lifecycle no longer keeps the objects it names (an accepted
instance's data, which an operator may want gone at once), and it is not replayed unless forced.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc
from kafka.consumer.fetcher import ConsumerRecord
from pymongo.database import Database

from services.common.bus import DEAD_LETTER_HEADERS, VALUE_DROPPED_HEADER, BusProducer
from services.common.control_server import ServicerRegistration
from services.common.dead_letter_handling import DISCARDED, HANDLED, LETTER_MS, REPLAYED, discarded_at, position
from services.common.dead_letter_limits import DEFAULT_LIMIT, MAX_LIMIT
from services.common.dead_letter_topic import DeadLetterTopic
from services.common.messages import OutgoingMessage
from services.common.publish_refusals import RecordRefused
from services.proto_gen.imx.v1 import admin_pb2, admin_pb2_grpc

STAGE_SCAN = 10  # with a stage asked for, its newest N are looked for among the newest N x STAGE_SCAN (<= MAX_LIMIT)


def _text(headers: dict[str, bytes], name: str) -> str:
    return headers.get(name, b"").decode("utf-8", "replace")


def _number(headers: dict[str, bytes], name: str) -> int:
    try:
        return int(_text(headers, name))
    except ValueError:
        return -1


def _headers(record: ConsumerRecord) -> dict[str, bytes]:
    return {k: (v or b"") for k, v in (record.headers or [])}


def describe(record: ConsumerRecord, handled: Mapping[str, int] | None = None) -> admin_pb2.DeadLetter:
    """The letter as listed; `handled`: its document of what operators did with it (dead_letter_handling)."""
    handled = handled or {}
    headers = _headers(record)
    return admin_pb2.DeadLetter(
        partition=record.partition,
        offset=record.offset,
        timestamp_ms=record.timestamp,
        stage=_text(headers, "imx-stage"),
        error_type=_text(headers, "imx-error-type"),
        error=_text(headers, "imx-error"),
        failure=_text(headers, "imx-failure"),
        source_topic=_text(headers, "imx-source-topic"),
        source_partition=_number(headers, "imx-source-partition"),
        source_offset=_number(headers, "imx-source-offset"),
        size=len(record.value or b""),
        replayed_at_ms=int(handled.get(REPLAYED, 0)),
        discarded_at_ms=discarded_at(handled, record.timestamp),
        header_names=sorted(name for name in headers if name not in DEAD_LETTER_HEADERS),
    )


def replay_of(record: ConsumerRecord) -> OutgoingMessage:
    """The message as its stage first read it: same value, key and headers (so the same trace)."""
    headers = _headers(record)
    return OutgoingMessage(
        topic=_text(headers, "imx-source-topic"),
        value=record.value or b"",
        key=record.key,
        headers={k: v for k, v in headers.items() if k not in DEAD_LETTER_HEADERS},
    )


@dataclass(frozen=True)
class Replay:
    topic: str
    replayed_at_ms: int


class AlreadyReplayed(Exception):
    pass


class AlreadyDiscarded(Exception):
    pass


class DeadLetters:
    """The dead-letter topic with the record of what was replayed (MongoDB, `_id` = partition:offset)."""

    def __init__(
        self,
        topic: DeadLetterTopic,
        db: Database,
        producer: Callable[[], BusProducer],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._topic = topic
        self._handled = db[HANDLED]
        self._producer = producer
        self._clock = clock

    def _handled_at(self, ids: list[str]) -> dict[str, dict[str, int]]:
        """What was done with each letter: {position: {replayed_at_ms, discarded_at_ms}} (those with any)."""
        if not ids:
            return {}
        docs = self._handled.find({"_id": {"$in": ids}}, {REPLAYED: 1, DISCARDED: 1, LETTER_MS: 1})
        return {d["_id"]: {k: int(d[k]) for k in (REPLAYED, DISCARDED, LETTER_MS) if k in d} for d in docs}

    def list(self, limit: int, stage: str = "") -> list[admin_pb2.DeadLetter]:
        """The newest `limit` (of `stage`'s, when given: looked for among the newest `limit` x STAGE_SCAN,
        at most MAX_LIMIT, of each partition, where filtering the newest `limit` found none when they
        were another stage's)."""
        if not stage:
            records = self._topic.newest(limit)
        else:
            found = self._topic.newest(min(limit * STAGE_SCAN, MAX_LIMIT))
            records = [r for r in found if _text(_headers(r), "imx-stage") == stage][-limit:]
        handled = self._handled_at([position(r.partition, r.offset) for r in records])
        return [describe(r, handled.get(position(r.partition, r.offset))) for r in records]

    def _letter(self, partition: int, offset: int) -> tuple[str, ConsumerRecord, dict[str, int]] | None:
        """(its position, the letter, what was done with it); None when there is no such dead letter."""
        record = self._topic.at(partition, offset)
        if record is None:
            return None
        key = position(partition, offset)
        return key, record, self._handled_at([key]).get(key, {})

    def get(self, partition: int, offset: int) -> admin_pb2.DeadLetter | None:
        letter = self._letter(partition, offset)
        return None if letter is None else describe(letter[1], letter[2])

    def replay(self, partition: int, offset: int, force: bool = False) -> Replay | None:
        """None when there is no such dead letter; AlreadyReplayed or AlreadyDiscarded unless `force`."""
        letter = self._letter(partition, offset)
        if letter is None:
            return None
        key, record, done = letter
        if not force and discarded_at(done, record.timestamp):
            raise AlreadyDiscarded(key)
        if not force and done.get(REPLAYED):
            raise AlreadyReplayed(key)
        message = replay_of(record)
        if not message.topic:
            raise ValueError("the dead letter does not name its source topic")
        if VALUE_DROPPED_HEADER in _headers(record):
            raise ValueError(
                "the dead letter lost part of its original (too large to carry with its headers): not replayed"
            )
        self._producer().publish([message])
        now_ms = int(self._clock() * 1000)
        # Replayed, it is not discarded any more: its objects are kept again while its replay may need them.
        self._handled.update_one(
            {"_id": key},
            {
                "$set": {REPLAYED: now_ms, "topic": message.topic},
                "$inc": {"replays": 1},
                "$unset": {DISCARDED: "", LETTER_MS: ""},
            },
            upsert=True,
        )
        return Replay(message.topic, now_ms)

    def discard(self, partition: int, offset: int, force: bool = False) -> int | None:
        """When the letter was discarded (the first time, for one discarded before); None when there is no
        such dead letter; AlreadyReplayed, unless `force`, for one replayed: its replay may still be on
        its way through the stage, which needs the objects its letter keeps."""
        letter = self._letter(partition, offset)
        if letter is None:
            return None
        key, record, done = letter
        if earlier := discarded_at(done, record.timestamp):
            return earlier
        if not force and done.get(REPLAYED):
            raise AlreadyReplayed(key)
        now_ms = int(self._clock() * 1000)
        self._handled.update_one({"_id": key}, {"$set": {DISCARDED: now_ms, LETTER_MS: record.timestamp}}, upsert=True)
        return now_ms


class DeadLetterAdminServicer(admin_pb2_grpc.DeadLetterAdminServicer):
    def __init__(self, dead_letters: DeadLetters) -> None:
        self._dead_letters = dead_letters

    def ListDeadLetters(
        self, request: admin_pb2.ListDeadLettersRequest, context: grpc.ServicerContext
    ) -> admin_pb2.ListDeadLettersReply:
        if request.limit > MAX_LIMIT:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"limit is at most {MAX_LIMIT}")
        limit = request.limit if request.limit > 0 else DEFAULT_LIMIT
        return admin_pb2.ListDeadLettersReply(dead_letters=self._dead_letters.list(limit, request.stage))

    def GetDeadLetter(
        self, request: admin_pb2.GetDeadLetterRequest, context: grpc.ServicerContext
    ) -> admin_pb2.GetDeadLetterReply:
        found = self._dead_letters.get(request.partition, request.offset)
        if found is None:
            _no_such_letter(context, request)
        return admin_pb2.GetDeadLetterReply(dead_letter=found)

    def ReplayDeadLetter(
        self, request: admin_pb2.ReplayDeadLetterRequest, context: grpc.ServicerContext
    ) -> admin_pb2.ReplayDeadLetterReply:
        try:
            replay = self._dead_letters.replay(request.partition, request.offset, request.force)
        except AlreadyReplayed:
            _needs_force(context, request, "was replayed before; force to replay again")
        except AlreadyDiscarded:
            _needs_force(
                context,
                request,
                "was discarded (the objects it names may be gone); force to replay it all the same",
            )
        except ValueError as error:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(error))
        except RecordRefused as error:
            context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"its source topic refused it ({error}): mend the topic (a record too large: its max.message.bytes)"
                " and replay again",
            )
        if replay is None:
            _no_such_letter(context, request)
        return admin_pb2.ReplayDeadLetterReply(topic=replay.topic, replayed_at_ms=replay.replayed_at_ms)

    def DiscardDeadLetter(
        self, request: admin_pb2.DiscardDeadLetterRequest, context: grpc.ServicerContext
    ) -> admin_pb2.DiscardDeadLetterReply:
        try:
            discarded_at_ms = self._dead_letters.discard(request.partition, request.offset, request.force)
        except AlreadyReplayed:
            _needs_force(
                context,
                request,
                "was replayed, and the stage may still need the objects it names; force to discard it all the same",
            )
        if discarded_at_ms is None:
            _no_such_letter(context, request)
        return admin_pb2.DiscardDeadLetterReply(discarded_at_ms=discarded_at_ms)


def _needs_force(context: grpc.ServicerContext, request: Any, why: str) -> NoReturn:
    """FAILED_PRECONDITION for a replay or discard the letter's state refuses unless forced."""
    context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"dead letter {request.partition}:{request.offset} {why}")
    raise AssertionError("abort raises")


def _no_such_letter(context: grpc.ServicerContext, request: Any) -> NoReturn:
    context.abort(grpc.StatusCode.NOT_FOUND, f"no dead letter at {request.partition}:{request.offset}")
    raise AssertionError("abort raises")


class LazyProducer:
    """One producer, made on the first replay: most audit processes never replay anything."""

    def __init__(self, bootstrap: str, client_config: Mapping[str, str] | None = None) -> None:
        self._bootstrap = bootstrap
        self._client_config = client_config
        self._producer: BusProducer | None = None
        self._lock = threading.Lock()

    def __call__(self) -> BusProducer:
        with self._lock:
            if self._producer is None:
                self._producer = BusProducer(
                    self._bootstrap, client_id="imx-dead-letter-replay", client_config=self._client_config
                )
            return self._producer


def register_dead_letter_admin(
    bootstrap: str, dead_letter_topic: str, db: Database, client_config: Mapping[str, str] | None = None
) -> ServicerRegistration:
    dead_letters = DeadLetters(
        DeadLetterTopic(bootstrap, dead_letter_topic, client_config), db, LazyProducer(bootstrap, client_config)
    )

    def register(server: grpc.Server) -> None:
        admin_pb2_grpc.add_DeadLetterAdminServicer_to_server(DeadLetterAdminServicer(dead_letters), server)

    return register
