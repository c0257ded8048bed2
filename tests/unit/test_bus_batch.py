"""The consumer loop's pure core: ordering, dead letters, transient retries, what gets committed."""

from __future__ import annotations

from kafka.consumer.fetcher import ConsumerRecord
from kafka.structs import TopicPartition

from services.common.bus import (
    MAX_MESSAGE_BYTES,
    VALUE_DROPPED_HEADER,
    batch_starts,
    dead_letter_for,
    describe_error,
    incoming_message,
    pipelined,
    run_handler_over_batch,
)
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
    assert result.sources == [0, 1, 2], "each output names the record that made it, a dead letter too"


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


def test_a_tombstone_is_an_empty_event_whose_dead_letter_can_be_sent() -> None:
    """A partner may write a record with neither key nor value to its receipts topic: its dead letter was
    refused by the producer (ValueError) and delivery and audit exited, read it again, and exited."""
    record = ConsumerRecord(
        topic="in", partition=0, leader_epoch=0, offset=7, timestamp=0, timestamp_type=0, key=None, value=None,
        headers=[("x-origin", None)], checksum=None, serialized_key_size=-1, serialized_value_size=-1,
        serialized_header_size=-1,
    )  # fmt: skip
    message = incoming_message(record)
    assert message.value == b"" and message.key is None and message.headers == {"x-origin": b""}

    def refuses(_message: IncomingMessage) -> list[OutgoingMessage]:
        raise ValueError("not an event")

    (dead,) = run_handler_over_batch([message], refuses, "dlq", "test").outputs
    assert dead.value == b"" and dead.key is None  # kafka-python sends this; None for both it refuses


def test_a_dead_letter_too_large_for_its_headers_keeps_them_and_says_what_it_dropped() -> None:
    """An original just under the limit plus the dead letter's headers was refused by the broker, and the
    stage retried it for ever, its partition held."""
    big = b"x" * (MAX_MESSAGE_BYTES - 100)
    dead = dead_letter_for(_msg(0, 3, big), ValueError("bad"), "dlq", "test")
    assert dead.value == b"" and dead.headers[VALUE_DROPPED_HEADER] == str(len(big)).encode()
    assert dead.headers["imx-source-offset"] == b"3" and dead.headers["x-origin"] == b"test"
    small = dead_letter_for(_msg(0, 4, b"poison"), ValueError("bad"), "dlq", "test")
    assert small.value == b"poison" and VALUE_DROPPED_HEADER not in small.headers
    # A key or headers that large (a partner writes its receipts' too) go as well.
    big_key = IncomingMessage("in", 0, 5, b"k" * (MAX_MESSAGE_BYTES - 150), b"v", {"x-origin": b"test"})
    dead = dead_letter_for(big_key, ValueError("bad"), "dlq", "test")
    assert dead.key is None and dead.value == b"v" and "x-origin" not in dead.headers, "the value fits: kept"
    assert dead.headers[VALUE_DROPPED_HEADER] == b"key+headers" and dead.headers["imx-source-offset"] == b"5"
    assert len(b"".join(k.encode() + v for k, v in dead.headers.items())) < 4096
    both = IncomingMessage("in", 0, 6, b"k" * (MAX_MESSAGE_BYTES // 2), bytes(MAX_MESSAGE_BYTES - 100), {})
    dead = dead_letter_for(both, ValueError("bad"), "dlq", "test")  # the value too large: it goes, the key fits
    assert dead.key == both.key and dead.value == b""
    assert dead.headers[VALUE_DROPPED_HEADER] == str(MAX_MESSAGE_BYTES - 100).encode()
    # A value just under the limit with a small key: the value goes, the key and headers stay.
    small_key = IncomingMessage("in", 0, 8, b"study", bytes(MAX_MESSAGE_BYTES - 100), {"x-origin": b"test"})
    dead = dead_letter_for(small_key, ValueError("bad"), "dlq", "test")
    assert dead.key == b"study" and dead.headers["x-origin"] == b"test" and dead.value == b""
    all_large = IncomingMessage("in", 0, 7, b"k" * (MAX_MESSAGE_BYTES - 100), bytes(MAX_MESSAGE_BYTES - 100), {})
    dead = dead_letter_for(all_large, ValueError("bad"), "dlq", "test")
    assert dead.key is None and dead.value == b""
    assert dead.headers[VALUE_DROPPED_HEADER] == str(MAX_MESSAGE_BYTES - 100).encode() + b"+key+headers"
