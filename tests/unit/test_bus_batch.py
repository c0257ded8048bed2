"""The consumer loop's pure core: ordering, dead letters, transient retries, what gets committed."""

from __future__ import annotations

from kafka.structs import TopicPartition

from services.common.bus import batch_starts, describe_error, pipelined, run_handler_over_batch
from services.common.messages import IncomingMessage, OutgoingMessage, TransientError


def _msg(partition: int, offset: int, value: bytes) -> IncomingMessage:
    return IncomingMessage("in", partition, offset, b"k", value, {"x-origin": b"test"})


def _echo(message: IncomingMessage) -> list[OutgoingMessage]:
    return [OutgoingMessage("out", message.value.upper(), message.key)]


def test_every_record_is_handled_and_the_next_offset_is_committed() -> None:
    records = [_msg(0, 10, b"a"), _msg(0, 11, b"b"), _msg(1, 5, b"c")]
    result = run_handler_over_batch(records, _echo, "dlq", "test")
    assert [o.value for o in result.outputs] == [b"A", b"B", b"C"]
    assert result.commits == {TopicPartition("in", 0): 12, TopicPartition("in", 1): 6}
    assert result.processed == 3 and result.failed == 0


def test_a_raising_handler_sends_only_that_record_to_dead_letter_with_its_headers() -> None:
    def handler(message: IncomingMessage) -> list[OutgoingMessage]:
        if message.value == b"poison":
            raise ValueError("PATIENT^NAME should never be printed")
        return _echo(message)

    records = [_msg(0, 0, b"a"), _msg(0, 1, b"poison"), _msg(0, 2, b"c")]
    result = run_handler_over_batch(records, handler, "dlq", "test")
    dead = [o for o in result.outputs if o.topic == "dlq"]
    assert len(dead) == 1
    assert dead[0].value == b"poison"
    assert dead[0].headers["x-origin"] == b"test"
    assert dead[0].headers["imx-error-type"] == b"ValueError"
    assert dead[0].headers["imx-source-offset"] == b"1"
    assert b"PATIENT" not in dead[0].headers["imx-error"], "arbitrary exception text may carry PHI"
    assert [o.value for o in result.outputs if o.topic == "out"] == [b"A", b"C"]
    assert result.commits == {TopicPartition("in", 0): 3}
    assert result.failed == 1


def test_a_transient_error_stops_its_partition_at_the_failing_record_only() -> None:
    def handler(message: IncomingMessage) -> list[OutgoingMessage]:
        if message.value == b"flaky":
            raise TransientError("database unavailable")
        return _echo(message)

    records = [_msg(0, 0, b"a"), _msg(0, 1, b"flaky"), _msg(0, 2, b"c"), _msg(1, 7, b"d")]
    result = run_handler_over_batch(records, handler, "dlq", "test")
    assert result.retry_from == {TopicPartition("in", 0): 1}
    assert result.commits == {TopicPartition("in", 0): 1, TopicPartition("in", 1): 8}
    assert [o.value for o in result.outputs] == [b"A", b"D"], "nothing after the failing record is handled"


def test_phi_safe_errors_keep_their_message() -> None:
    assert "database unavailable" in describe_error(TransientError("database unavailable"))
    assert "secret" not in describe_error(RuntimeError("secret"))


def test_two_batches_are_read_again_from_each_partitions_lowest_offset() -> None:
    in_flight = [_msg(0, 10, b"a"), _msg(0, 11, b"b")]
    handled_meanwhile = [_msg(0, 12, b"c"), _msg(1, 5, b"d"), _msg(1, 6, b"e")]
    assert batch_starts([*in_flight, *handled_meanwhile]) == {TopicPartition("in", 0): 10, TopicPartition("in", 1): 5}
    assert batch_starts([*handled_meanwhile, *in_flight])[TopicPartition("in", 0)] == 10


def test_only_a_handler_with_all_three_pipeline_calls_is_pipelined() -> None:
    class Writer:
        def __call__(self, message: IncomingMessage) -> list[OutgoingMessage]:
            return []

        def flush_begin(self) -> None: ...

        def flush_wait(self) -> None: ...

    writer = Writer()
    assert pipelined(_echo) is None and pipelined(writer) is None
    writer.discard = lambda: None  # type: ignore[attr-defined]
    assert pipelined(writer) is writer
