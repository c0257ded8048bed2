"""The bus against a real Kafka broker: round trip, dead letters, at-least-once under SIGKILL."""

from __future__ import annotations

import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from services.common.bus import BusProducer, StageConsumer, ensure_topics
from services.common.messages import IncomingMessage, OutgoingMessage
from services.common.stats import StageStats
from tests.integration import crash_worker
from tests.integration.bus_helpers import committed_and_end_offsets, read_all, read_to_end, stage_consumer

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def _consume_until(consumer: StageConsumer, handler, done: threading.Event, rounds: int = 60) -> None:  # type: ignore[no-untyped-def]
    for _ in range(rounds):
        consumer.poll_once(handler)
        if done.is_set():
            return


def _stage(kafka_bootstrap: str, producer: BusProducer, topic: str, group: str, dlq: str) -> StageConsumer:
    return stage_consumer(kafka_bootstrap, producer, [topic], group, dlq, max_batch=20)


def test_round_trip_keeps_key_value_headers_and_trace_context(kafka_bootstrap: str, unique_name: str) -> None:
    topic, out, dlq = f"{unique_name}.in", f"{unique_name}.out", f"{unique_name}.dlq"
    ensure_topics(kafka_bootstrap, [topic, out, dlq], partitions=3)
    trace.set_tracer_provider(TracerProvider())
    producer = BusProducer(kafka_bootstrap)
    tracer = trace.get_tracer("test")
    with tracer.start_as_current_span("send") as span:
        sent_trace_id = span.get_span_context().trace_id
        producer.publish([OutgoingMessage(topic, b"payload", b"study-1", {"x-kind": b"demo"})])

    received: list[IncomingMessage] = []
    seen_trace_ids: list[int] = []
    done = threading.Event()

    def handler(message: IncomingMessage) -> list[OutgoingMessage]:
        received.append(message)
        seen_trace_ids.append(trace.get_current_span().get_span_context().trace_id)
        done.set()
        return [OutgoingMessage(out, message.value + b"!", message.key)]

    consumer = _stage(kafka_bootstrap, producer, topic, f"{unique_name}-g", dlq)
    _consume_until(consumer, handler, done)
    consumer.close()
    assert len(received) == 1
    assert (received[0].key, received[0].value, received[0].headers["x-kind"]) == (b"study-1", b"payload", b"demo")
    assert "traceparent" in received[0].headers
    assert seen_trace_ids == [sent_trace_id], "the handler runs inside the sender's trace"
    [output] = read_all(kafka_bootstrap, out, expected=1)
    assert output.value == b"payload!"
    headers = dict(output.headers)
    assert f"{sent_trace_id:032x}" in headers["traceparent"].decode(), "the trace continues on the next hop"
    producer.close()


def test_a_failing_message_goes_to_dead_letter_and_the_others_are_processed(
    kafka_bootstrap: str, unique_name: str
) -> None:
    topic, out, dlq = f"{unique_name}.in", f"{unique_name}.out", f"{unique_name}.dlq"
    ensure_topics(kafka_bootstrap, [topic, out, dlq], partitions=1)
    producer = BusProducer(kafka_bootstrap)
    producer.publish([OutgoingMessage(topic, str(i).encode(), b"k", {"x-n": str(i).encode()}) for i in range(10)])
    handled: list[bytes] = []
    done = threading.Event()

    def handler(message: IncomingMessage) -> list[OutgoingMessage]:
        handled.append(message.value)
        if len(handled) == 10:
            done.set()
        if message.value == b"4":
            raise RuntimeError("cannot parse")
        return [OutgoingMessage(out, message.value, message.key)]

    consumer = _stage(kafka_bootstrap, producer, topic, f"{unique_name}-g", dlq)
    _consume_until(consumer, handler, done)
    consumer.close()
    outputs = read_all(kafka_bootstrap, out, expected=9)
    assert sorted(r.value for r in outputs) == sorted(str(i).encode() for i in range(10) if i != 4)
    [dead] = read_all(kafka_bootstrap, dlq, expected=1)
    headers = dict(dead.headers)
    assert dead.value == b"4"
    assert headers["x-n"] == b"4", "the original headers travel with the dead letter"
    assert headers["imx-error-type"] == b"RuntimeError"
    assert headers["imx-source-topic"] == topic.encode()
    committed, end = committed_and_end_offsets(kafka_bootstrap, topic, f"{unique_name}-g")
    assert committed == end == {0: 10}, "the poison message is committed, not retried forever"
    producer.close()


def test_sigkill_before_commit_redelivers_and_never_skips(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    topic, out = f"{unique_name}.in", f"{unique_name}.out"
    group = f"{unique_name}-g"
    ensure_topics(kafka_bootstrap, [topic, out, out + ".dlq"], partitions=3)
    total = 1000
    producer = BusProducer(kafka_bootstrap)
    producer.publish([OutgoingMessage(topic, str(i).encode(), str(i % 17).encode()) for i in range(total)])
    producer.close()
    log = tmp_path / "handled.log"
    kills = [120, 260, 75, 300]
    for kill_after in [*kills, 0]:
        proc = subprocess.run(
            crash_worker.command(kafka_bootstrap, topic, out, group, log, kill_after),
            cwd=REPO,
            timeout=180,
            capture_output=True,
        )
        if kill_after:
            assert proc.returncode == -9, proc.stderr.decode()[-2000:]
        else:
            assert proc.returncode == 0, proc.stderr.decode()[-2000:]

    handled = Counter(line for line in log.read_text().split())
    assert set(handled) == {str(i) for i in range(total)}, "no message is ever skipped"
    redelivered = [value for value, n in handled.items() if n > 1]
    assert len(redelivered) >= len(kills), "the message in flight at each kill is delivered again"
    # Redelivered records are published again, so a count of output records says nothing: read them all.
    outputs = read_to_end(kafka_bootstrap, out)
    assert {r.value.decode() for r in outputs} == {str(i) for i in range(total)}
    committed, end = committed_and_end_offsets(kafka_bootstrap, topic, group)
    assert committed == end and sum(end.values()) == total


def test_a_batch_outliving_its_group_membership_is_read_again_and_the_stage_carries_on(
    kafka_bootstrap: str, unique_name: str
) -> None:
    """A batch that takes longer than max.poll.interval costs the member its partitions, so its commit
    fails (as it does when the group rebalances under a batch). The outputs are already published: the
    stage must carry on and read the batch again, not stop."""
    topic, out, dlq = f"{unique_name}.in", f"{unique_name}.out", f"{unique_name}.dlq"
    group = f"{unique_name}-g"
    ensure_topics(kafka_bootstrap, [topic, out, dlq], partitions=1)
    producer = BusProducer(kafka_bootstrap)
    total = 10
    producer.publish([OutgoingMessage(topic, str(i).encode(), b"k") for i in range(total)])
    handled: list[str] = []

    def handler(message: IncomingMessage) -> list[OutgoingMessage]:
        if not handled:
            time.sleep(5)  # longer than max_poll_interval_ms below
        handled.append(message.value.decode())
        return [OutgoingMessage(out, message.value, message.key)]

    stats = StageStats("test")
    consumer = stage_consumer(
        kafka_bootstrap,
        producer,
        [topic],
        group,
        dlq,
        stats=stats,
        max_batch=total,
        session_timeout_ms=6000,
        max_poll_interval_ms=2000,
    )
    deadline = time.monotonic() + 60
    committed: dict[int, int] = {}
    end: dict[int, int] = {}
    while time.monotonic() < deadline:
        consumer.poll_once(handler)  # raised here before the fix, which stopped the stage for good
        if len(handled) > total:
            committed, end = committed_and_end_offsets(kafka_bootstrap, topic, group)
            if committed == end:
                break
    consumer.close()
    producer.close()
    assert stats.snapshot().commit_failures >= 1
    times = Counter(handled)
    assert set(times) == {str(i) for i in range(total)}, "nothing lost"
    assert times["0"] >= 2, "the batch whose commit failed was read again"
    assert committed == end == {0: total}
    outputs = read_all(kafka_bootstrap, out, expected=len(handled))
    assert {r.value.decode() for r in outputs} == set(times), "at least once: every output published"
