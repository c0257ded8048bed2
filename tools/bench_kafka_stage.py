"""One stage hop of `make bench-kafka-client`: read records from one topic and publish one per record to
another, acks=all and idempotent, committing only what was published. Without a target topic the stage
only reads and commits, as audit does with most of what it reads.

`imx` runs the project's own bus (services/common/bus.py: StageConsumer and BusProducer on kafka-python,
with their tuned fetches and commits). `librdkafka` runs confluent-kafka with the same choices: fetches
held for 64 KiB or 100 ms, every batch's outputs flushed before its offsets may be committed, commits at
most every 5 s and at the end. It runs in its own environment (var/bench-venv), so this file imports
nothing of the project at the top.

The first record read is a warm-up (the group has joined); the stage then says `ready` on stdout and
counts its own CPU (user + system, every thread) over the next `records`. Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from collections.abc import Callable
from typing import Any

# What the bus uses (services/common/bus.py), spelled out here for the environment that lacks it.
FETCH_MIN_BYTES = 64 * 1024
FETCH_MAX_WAIT_MS = 100
COMMIT_INTERVAL_S = 5.0
MAX_BATCH = 200


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Counter:
    """Counts records after the warm-up; says `ready` once, when the warm-up record has been read."""

    def __init__(self, wanted: int) -> None:
        self.wanted = wanted
        self.counted = 0
        self.warm = False
        self.cpu_at_start = 0.0
        self.started = 0.0

    def saw(self) -> None:
        if not self.warm:
            self.warm = True
            print("ready", flush=True)
            self.cpu_at_start, self.started = cpu_seconds(), time.monotonic()
            return
        self.counted += 1

    @property
    def done(self) -> bool:
        return self.counted >= self.wanted

    def result(self, client: str, version: str) -> dict[str, object]:
        cpu = cpu_seconds() - self.cpu_at_start
        return {
            "client": client,
            "version": version,
            "records": self.counted,
            "cpu_ms_per_record": round(cpu * 1000 / max(self.counted, 1), 4),
            "seconds": round(time.monotonic() - self.started, 2),
        }


def run_imx(bootstrap: str, source: str, target: str, group: str, counter: Counter) -> str:
    from kafka import __version__ as kafka_version

    from services.common.bus import BusProducer, StageConsumer
    from services.common.messages import IncomingMessage, OutgoingMessage
    from services.common.stats import StageStats

    producer = BusProducer(bootstrap, client_id="bench-stage")
    consumer = StageConsumer(
        bootstrap=bootstrap,
        group_id=group,
        topics=[source],
        producer=producer,
        dead_letter_topic=f"{source}-dead",
        stage="bench",
        stats=StageStats("bench"),
        max_batch=MAX_BATCH,
    )

    def forward(record: IncomingMessage) -> list[OutgoingMessage]:
        counter.saw()
        return [OutgoingMessage(target, record.value, record.key, record.headers)] if target else []

    try:
        while not counter.done:
            consumer.poll_once(forward)
        consumer.commit_owed()
    finally:
        consumer.close()
        producer.close()
    return f"kafka-python {kafka_version}"


def run_librdkafka(bootstrap: str, source: str, target: str, group: str, counter: Counter) -> str:
    import confluent_kafka  # type: ignore[import-not-found,unused-ignore]

    consumer = confluent_kafka.Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "fetch.min.bytes": FETCH_MIN_BYTES,
            "fetch.wait.max.ms": FETCH_MAX_WAIT_MS,
        }
    )
    producer = confluent_kafka.Producer(
        {"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True, "linger.ms": 5}
    )
    failed: list[str] = []

    def delivered(err: object, _message: object) -> None:
        if err is not None:
            failed.append(str(err))

    consumer.subscribe([source])
    committed_at = time.monotonic()
    try:
        while not counter.done:
            records = [r for r in consumer.consume(num_messages=MAX_BATCH, timeout=0.5) if r.error() is None]
            for record in records:
                counter.saw()
                if target:
                    producer.produce(
                        target, value=record.value(), key=record.key(), headers=record.headers(), on_delivery=delivered
                    )
            if records and target and producer.flush(60) != 0:
                raise RuntimeError("the broker did not acknowledge a batch within 60 s")
            if failed:
                raise RuntimeError(f"the broker refused a record: {failed[0]}")
            if records and time.monotonic() - committed_at >= COMMIT_INTERVAL_S:
                consumer.commit(asynchronous=False)
                committed_at = time.monotonic()
        commit_what_is_left(consumer, confluent_kafka)
    finally:
        consumer.close()
    return f"confluent-kafka {confluent_kafka.__version__} (librdkafka {confluent_kafka.libversion()[0]})"


def commit_what_is_left(consumer: Any, confluent_kafka: Any) -> None:
    """The closing commit. librdkafka refuses a commit with nothing new since the last one (_NO_OFFSET,
    "No offset stored"), which is what is left when the periodic commit took the last batch: then nothing
    is owed, and the run is not a failure."""
    try:
        consumer.commit(asynchronous=False)
    except confluent_kafka.KafkaException as error:
        if error.args[0].code() != confluent_kafka.KafkaError._NO_OFFSET:
            raise


CLIENTS: dict[str, Callable[[str, str, str, str, Counter], str]] = {
    "imx": run_imx,
    "librdkafka": run_librdkafka,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("client", choices=sorted(CLIENTS))
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--source", required=True)
    parser.add_argument("--target", default="", help="the topic to publish to; none: only read and commit")
    parser.add_argument("--group", required=True)
    parser.add_argument("--records", type=int, required=True, help="records counted after the warm-up one")
    args = parser.parse_args(argv)
    counter = Counter(args.records)
    version = CLIENTS[args.client](args.bootstrap, args.source, args.target, args.group, counter)
    print(json.dumps(counter.result(args.client, version)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
