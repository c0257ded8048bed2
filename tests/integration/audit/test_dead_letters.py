"""`imx dlq list|show|replay` against a real broker and database: a poison message dead-lettered by a
stage is listed (never its content), replayed to its source topic once the stage is fixed, and processed;
a second replay is refused unless forced."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
from pymongo.database import Database
from typer.testing import CliRunner

from services.audit.dead_letters import register_dead_letter_admin
from services.cli.dlq import _when
from services.cli.main import app
from services.common.bus import BusProducer, StageConsumer, ensure_topics
from services.common.control_channel import control_channel
from services.common.messages import IncomingMessage, OutgoingMessage
from services.proto_gen.imx.v1 import admin_pb2, admin_pb2_grpc
from tests.integration.bus_helpers import limit_records, read_all, stage_consumer

pytestmark = pytest.mark.integration
SECRET = b"Thistlewood^Margery"  # stands for PHI in the message: never shown


@pytest.fixture
def admin_address(kafka_bootstrap: str, unique_name: str, db: Database) -> Iterator[str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    register_dead_letter_admin(kafka_bootstrap, f"{unique_name}.dlq", db)(server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(None)


def _poll_until(consumer: StageConsumer, handler, done: threading.Event, rounds: int = 60) -> None:  # type: ignore[no-untyped-def]
    for _ in range(rounds):
        consumer.poll_once(handler)
        if done.is_set():
            return


def test_a_dead_letter_is_listed_replayed_after_the_fix_and_processed(
    kafka_bootstrap: str, unique_name: str, admin_address: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    topic, out, dlq = f"{unique_name}.in", f"{unique_name}.out", f"{unique_name}.dlq"
    ensure_topics(kafka_bootstrap, [topic, out, dlq], partitions=1)
    producer = BusProducer(kafka_bootstrap)
    producer.publish([OutgoingMessage(topic, SECRET, b"study-1", {"x-kind": b"demo"}), OutgoingMessage(topic, b"ok")])
    fixed, done = False, threading.Event()
    processed: list[IncomingMessage] = []

    def handler(message: IncomingMessage) -> list[OutgoingMessage]:
        if message.value == SECRET and not fixed:
            raise RuntimeError("a defect in the stage")
        processed.append(message)
        if message.value == SECRET:
            done.set()
        return [OutgoingMessage(out, message.value, message.key)]

    consumer = stage_consumer(kafka_bootstrap, producer, [topic], f"{unique_name}-g", dlq, stage="routing")
    try:
        assert _poll_until_dead_lettered(consumer, handler, kafka_bootstrap, dlq)
        [dead] = read_all(kafka_bootstrap, dlq, expected=1)

        monkeypatch.setenv("IMX_AUDIT_GRPC", admin_address)
        monkeypatch.setenv("COLUMNS", "250")
        runner = CliRunner()
        listed = runner.invoke(app, ["dlq", "list"])
        assert listed.exit_code == 0, listed.output
        assert f"{dead.partition}:{dead.offset}" in listed.output and "routing" in listed.output
        assert "RuntimeError" in listed.output and topic in listed.output
        shown = runner.invoke(app, ["dlq", "show", f"{dead.partition}:{dead.offset}"])
        assert shown.exit_code == 0, shown.output
        assert "x-kind" in shown.output and "defect" in shown.output
        assert SECRET.decode() not in listed.output + shown.output, "a dead letter's content is never shown"
        assert "study-1" not in listed.output + shown.output, "nor its key"

        with control_channel(admin_address) as channel:
            [letter] = (
                admin_pb2_grpc.DeadLetterAdminStub(channel)
                .ListDeadLetters(admin_pb2.ListDeadLettersRequest())
                .dead_letters
            )
        assert (letter.stage, letter.error_type, letter.source_topic, letter.source_offset) == (
            "routing",
            "RuntimeError",
            topic,
            0,
        )
        assert letter.replayed_at_ms == 0

        fixed = True
        replayed = runner.invoke(app, ["dlq", "replay", f"{dead.partition}:{dead.offset}"])
        assert replayed.exit_code == 0, replayed.output
        _poll_until(consumer, handler, done)
        assert done.is_set(), "the replayed message was processed by the fixed stage"
        again = [m for m in processed if m.value == SECRET]
        assert len(again) == 1 and again[0].key == b"study-1"
        assert again[0].headers["x-kind"] == b"demo", "the original headers travel with the replay"
        assert not any(name.startswith("imx-error") or name == "imx-stage" for name in again[0].headers)
        assert sorted(r.value for r in read_all(kafka_bootstrap, out, expected=2)) == sorted([b"ok", SECRET])

        refused = runner.invoke(app, ["dlq", "replay", f"{dead.partition}:{dead.offset}"])
        assert refused.exit_code == 1 and "replayed before" in refused.output
        forced = runner.invoke(app, ["dlq", "replay", f"{dead.partition}:{dead.offset}", "--force"])
        assert forced.exit_code == 0, forced.output
        with control_channel(admin_address) as channel:
            [letter] = (
                admin_pb2_grpc.DeadLetterAdminStub(channel)
                .ListDeadLetters(admin_pb2.ListDeadLettersRequest())
                .dead_letters
            )
        assert letter.replayed_at_ms > 0
        missing = runner.invoke(app, ["dlq", "show", "0:999"])
        assert missing.exit_code == 1 and "NOT_FOUND" in missing.output
    finally:
        consumer.close()
        producer.close()


def _poll_until_dead_lettered(consumer: StageConsumer, handler, bootstrap: str, dlq: str) -> bool:  # type: ignore[no-untyped-def]
    for _ in range(60):
        consumer.poll_once(handler)
        if read_all(bootstrap, dlq, expected=1, timeout_s=1):
            return True
    return False


def test_a_stage_asked_for_is_filtered_before_the_limit_and_the_limit_is_bounded(
    kafka_bootstrap: str, unique_name: str, admin_address: str
) -> None:
    """Filtered after the limit, `--stage deid --limit 2` listed nothing when the two newest were
    routing's; a limit of two billion read the whole topic, values of up to 16 MiB each."""
    dlq = f"{unique_name}.dlq"
    ensure_topics(kafka_bootstrap, [dlq], partitions=1)
    producer = BusProducer(kafka_bootstrap)
    producer.publish(
        [OutgoingMessage(dlq, b"x", None, {"imx-stage": b"deid"}) for _ in range(3)]
        + [OutgoingMessage(dlq, b"x", None, {"imx-stage": b"routing"}) for _ in range(5)]
    )
    producer.close()
    with control_channel(admin_address) as channel:
        stub = admin_pb2_grpc.DeadLetterAdminStub(channel)
        listed = stub.ListDeadLetters(admin_pb2.ListDeadLettersRequest(limit=2, stage="deid"), timeout=30)
        assert [d.stage for d in listed.dead_letters] == ["deid", "deid"]
        assert [d.offset for d in listed.dead_letters] == [1, 2]  # the newest two of deid's
        with pytest.raises(grpc.RpcError) as refused:
            stub.ListDeadLetters(admin_pb2.ListDeadLettersRequest(limit=1001), timeout=30)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_a_record_whose_output_its_topic_refused_is_replayed_once_the_topic_takes_it(
    kafka_bootstrap: str, unique_name: str, admin_address: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stage dead-letters the record (its partition moves on); a replay while the topic still refuses
    the output dead-letters it again; once the operator lets the topic take it, a replay gets it through.
    A source topic that refuses the replay itself is a refusal the operator is told about."""
    topic, out, dlq = f"{unique_name}.in", f"{unique_name}.out", f"{unique_name}.dlq"
    ensure_topics(kafka_bootstrap, [topic, dlq], partitions=1)
    limit_records(kafka_bootstrap, out, 1024, create=True)
    producer = BusProducer(kafka_bootstrap)
    producer.publish([OutgoingMessage(topic, b"big", b"k")])

    def handler(message: IncomingMessage) -> list[OutgoingMessage]:
        return [OutgoingMessage(out, message.value * 2000, message.key)]

    consumer = stage_consumer(kafka_bootstrap, producer, [topic], f"{unique_name}-g", dlq, stage="routing")
    monkeypatch.setenv("IMX_AUDIT_GRPC", admin_address)
    runner = CliRunner()
    try:
        assert _poll_until_dead_lettered(consumer, handler, kafka_bootstrap, dlq)
        [dead] = read_all(kafka_bootstrap, dlq, expected=1)
        assert dict(dead.headers)["imx-error-type"] == b"RecordRefused"
        limit_records(kafka_bootstrap, out, 2**21)
        replayed = runner.invoke(app, ["dlq", "replay", f"{dead.partition}:{dead.offset}"])
        assert replayed.exit_code == 0, replayed.output
        for _ in range(60):
            consumer.poll_once(handler)
            if read_all(kafka_bootstrap, out, expected=1, timeout_s=1):
                break
        assert [r.value for r in read_all(kafka_bootstrap, out, expected=1)] == [b"big" * 2000]

        limit_records(kafka_bootstrap, topic, 1)  # an operator set the source topic to take less than it held
        refused = runner.invoke(app, ["dlq", "replay", f"{dead.partition}:{dead.offset}", "--force"])
        assert refused.exit_code == 1 and "FAILED_PRECONDITION" in refused.output, refused.output
        assert "max.message.bytes" in refused.output
    finally:
        consumer.close()
        producer.close()


def test_a_discarded_dead_letter_is_listed_so_and_replayed_only_when_forced(
    kafka_bootstrap: str, unique_name: str, admin_address: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    topic, dlq = f"{unique_name}.in", f"{unique_name}.dlq"
    ensure_topics(kafka_bootstrap, [topic, dlq], partitions=1)
    producer = BusProducer(kafka_bootstrap)
    producer.publish([OutgoingMessage(dlq, SECRET, b"k", {"imx-stage": b"deid", "imx-source-topic": topic.encode()})])
    producer.close()
    monkeypatch.setenv("IMX_AUDIT_GRPC", admin_address)
    monkeypatch.setenv("COLUMNS", "250")
    runner = CliRunner()

    discarded = runner.invoke(app, ["dlq", "discard", "0:0"])
    assert discarded.exit_code == 0 and "discarded 0:0 at 20" in discarded.output, discarded.output
    with control_channel(admin_address) as channel:
        stub = admin_pb2_grpc.DeadLetterAdminStub(channel)
        [letter] = stub.ListDeadLetters(admin_pb2.ListDeadLettersRequest()).dead_letters
        again = stub.DiscardDeadLetter(admin_pb2.DiscardDeadLetterRequest(partition=0, offset=0))
    assert letter.discarded_at_ms > 0 and letter.replayed_at_ms == 0
    assert again.discarded_at_ms == letter.discarded_at_ms, "discarding again keeps the first time"
    shown = runner.invoke(app, ["dlq", "show", "0:0"])
    assert f"discarded: {_when(letter.discarded_at_ms)}" in shown.output and SECRET.decode() not in shown.output

    refused = runner.invoke(app, ["dlq", "replay", "0:0"])
    assert refused.exit_code == 1 and "was discarded" in refused.output, refused.output
    forced = runner.invoke(app, ["dlq", "replay", "0:0", "--force"])
    assert forced.exit_code == 0, forced.output
    assert [r.value for r in read_all(kafka_bootstrap, topic, expected=1)] == [SECRET]
    with control_channel(admin_address) as channel:
        stub = admin_pb2_grpc.DeadLetterAdminStub(channel)
        [letter] = stub.ListDeadLetters(admin_pb2.ListDeadLettersRequest()).dead_letters
    assert letter.discarded_at_ms == 0 and letter.replayed_at_ms > 0, "replayed, its objects are kept again"

    # Replayed, it is discarded only when forced: its replay may still need the objects it names.
    not_yet = runner.invoke(app, ["dlq", "discard", "0:0"])
    assert not_yet.exit_code == 1 and "was replayed" in not_yet.output, not_yet.output
    assert runner.invoke(app, ["dlq", "discard", "0:0", "--force"]).exit_code == 0

    missing = runner.invoke(app, ["dlq", "discard", "0:99"])
    assert missing.exit_code == 1 and "NOT_FOUND" in missing.output
