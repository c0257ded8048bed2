"""A running stage keeps its Kafka connections: its broker probe asks over them instead of signing in
again, against the session broker's SASL listener (services/common/bus.py StageConsumer._probe_broker).

kafka-python warns once per SASL sign-in on a SASL_PLAINTEXT listener ("... in the clear", PLAIN and
SCRAM alike), so those records count the connections a stage opens."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator

import pytest

from services.common.bus import BusProducer, ensure_topics
from services.common.messages import IncomingMessage, OutgoingMessage
from tests.conftest import KafkaInternal
from tests.integration.bus_helpers import stage_consumer
from tests.waiting import wait_for


class SignIns(logging.Handler):
    """Counts SASL sign-ins of every kafka-python client in this process."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "in the clear" in str(record.msg):
            self.count += 1


@pytest.fixture
def sign_ins() -> Iterator[SignIns]:
    logger = logging.getLogger("kafka.net.sasl")
    handler = SignIns()
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


def test_a_running_stage_probes_the_broker_without_signing_in_again(
    kafka_internal: KafkaInternal, unique_name: str, sign_ins: SignIns
) -> None:
    topic, dlq = f"{unique_name}.in", f"{unique_name}.dlq"
    config = kafka_internal.admin_config
    ensure_topics(kafka_internal.bootstrap, [topic, dlq], partitions=1, client_config=config)
    producer = BusProducer(kafka_internal.bootstrap, client_config=config)
    handled: list[bytes] = []

    def handler(message: IncomingMessage) -> list[OutgoingMessage]:
        handled.append(message.value)
        return []

    probe_interval_s = 0.25
    consumer = stage_consumer(
        kafka_internal.bootstrap,
        producer,
        [topic],
        f"{unique_name}-g",
        dlq,
        probe_interval_s=probe_interval_s,
        client_config=config,
    )
    stop = threading.Event()
    runner = threading.Thread(target=consumer.run, args=(handler, stop), daemon=True)
    runner.start()
    try:
        producer.publish([OutgoingMessage(topic, b"first")])
        wait_for(lambda: b"first" in handled, 60, "the stage to read its first message")
        time.sleep(1.0)  # the group settles: every connection the stage needs is open
        signed_in_before = sign_ins.count
        assert signed_in_before > 0, "the stage signs in with SASL (or this test counts nothing)"

        running_s = 4.0
        time.sleep(running_s)  # an idle stage: about 16 probes
        producer.publish([OutgoingMessage(topic, b"second")])
        wait_for(lambda: b"second" in handled, 30, "the stage to read a later message")

        assert runner.is_alive()
        assert sign_ins.count == signed_in_before, (
            f"{sign_ins.count - signed_in_before} new sign-ins in {running_s} s of probing every {probe_interval_s} s"
        )
    finally:
        stop.set()
        runner.join(timeout=30)
        consumer.close()
        producer.close()
