"""A stage replica with a stable name is a static member of its group (services/common/static_membership.py):
killed and started again under the same name, it reads again at once instead of after its old session
expires; stopped on purpose, it leaves its group at once, as a dynamic member does."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from services.common.bus import BusProducer, ensure_topics
from services.common.messages import OutgoingMessage
from services.common.static_membership import ReplicaNameTaken
from tests.integration import crash_worker
from tests.integration.bus_helpers import TopicsRead, poll_until_joined, stage_consumer

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SESSION_MS = 15_000  # long enough that waiting it out and not waiting it out are seconds apart


def test_a_static_member_killed_and_started_again_reads_before_its_old_session_expires(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    topic, out, group = f"{unique_name}.in", f"{unique_name}.out", f"{unique_name}-g"
    ensure_topics(kafka_bootstrap, [topic, out, out + ".dlq"], partitions=2)
    producer = BusProducer(kafka_bootstrap)
    producer.publish([OutgoingMessage(topic, str(i).encode(), str(i).encode()) for i in range(40)])
    worker = crash_worker.command(kafka_bootstrap, topic, out, group, tmp_path / "handled.log", kill_after=5)
    killed = subprocess.run(worker, cwd=REPO, timeout=120, capture_output=True)
    assert killed.returncode == -9, killed.stderr.decode()[-2000:]

    handler = TopicsRead()
    started = time.monotonic()
    again = stage_consumer(
        kafka_bootstrap,
        producer,
        [topic],
        group,
        out + ".dlq",
        group_instance_id="crash-worker",
        session_timeout_ms=SESSION_MS,
    )
    try:
        while not handler.topics:
            assert time.monotonic() - started < 30, "the restarted member read nothing"
            again.poll_once(handler)
        took = time.monotonic() - started
        # A dynamic member would wait out the killed one's session (crash_worker's: 10 s) first.
        assert took < 6, f"the restarted member read after {took:.1f} s"
    finally:
        again.close()
        producer.close()


def test_a_static_member_that_stops_on_purpose_hands_its_partitions_over_at_once(
    kafka_bootstrap: str, unique_name: str
) -> None:
    topic, dlq, group = f"{unique_name}.in", f"{unique_name}.dlq", f"{unique_name}-g"
    ensure_topics(kafka_bootstrap, [topic, dlq], partitions=2)
    producer = BusProducer(kafka_bootstrap)
    handler = TopicsRead()
    members = [
        stage_consumer(
            kafka_bootstrap, producer, [topic], group, dlq, group_instance_id=name, session_timeout_ms=SESSION_MS
        )
        for name in ("replica-a", "replica-b")
    ]
    leaving, staying = members
    try:
        deadline = time.monotonic() + 60  # each joins as the other polls: they are polled in turn
        while any(len(m._consumer.assignment()) != 1 for m in members):
            assert time.monotonic() < deadline, "the two members never shared the partitions"
            for member in members:
                member.poll_once(handler)

        leaving.close()
        stopped = time.monotonic()
        while len(staying._consumer.assignment()) < 2:
            assert time.monotonic() - stopped < 30, "the staying member never got the other partition"
            staying.poll_once(handler)
        took = time.monotonic() - stopped
        # Without a LeaveGroup the broker keeps the partition for the stopped member's whole session.
        assert took < SESSION_MS / 1000 * 0.7, f"the partition came over after {took:.1f} s"
    finally:
        staying.close()
        producer.close()


def test_a_replica_whose_name_another_replica_took_stops_instead_of_reading_everything_again(
    kafka_bootstrap: str, unique_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    topic, dlq, group = f"{unique_name}.in", f"{unique_name}.dlq", f"{unique_name}-g"
    ensure_topics(kafka_bootstrap, [topic, dlq], partitions=2)
    producer = BusProducer(kafka_bootstrap)
    first_read, second_read = TopicsRead(), TopicsRead()
    first = stage_consumer(kafka_bootstrap, producer, [topic], group, dlq, group_instance_id="replica-a")
    second = None
    try:
        poll_until_joined(first, first_read)
        # A misconfigured second replica under the same name: the broker fences the first.
        second = stage_consumer(kafka_bootstrap, producer, [topic], group, dlq, group_instance_id="replica-a")
        poll_until_joined(second, second_read)
        producer.publish([OutgoingMessage(topic, b"k", b"v")])

        deadline = time.monotonic() + 30
        with pytest.raises(ReplicaNameTaken):
            # kafka-python keeps the fenced member fetching; its refused commit is what stops it.
            while time.monotonic() < deadline:
                first.poll_once(first_read)
                second.poll_once(second_read)
        said = [r for r in caplog.records if r.name == "services.common.static_membership"]
        assert [(r.group, r.instance_id) for r in said] == [(group, "replica-a")]  # type: ignore[attr-defined]
        first.close()  # raises nothing, and sends no leave in the name (the broker would refuse it)
        assert "LeaveGroup" not in caplog.text

        while not second_read.topics:
            assert time.monotonic() < deadline, "the replica that took the name read nothing"
            second.poll_once(second_read)
        assert len(second._consumer.assignment()) == 2
    finally:
        if second is not None:
            second.close()
        producer.close()
