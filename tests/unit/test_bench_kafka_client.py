"""`make bench-kafka-client`: the order of runs, the pacing, the medians and what is printed."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from tools.bench_kafka_client import (
    BenchError,
    Hop,
    Run,
    describe,
    pace_deadlines,
    run_order,
    stage_command,
    summary,
    wait_until_ready,
)
from tools.bench_kafka_stage import Counter


def run(client: str, stage: float, broker: float, mode: str = "hop") -> Run:
    return Run(mode, client, f"{client} 1.0", 100, stage, broker, 1.0)


def test_runs_alternate_so_each_client_goes_first_as_often() -> None:
    assert run_order(1) == ["imx", "librdkafka"]
    assert run_order(3) == ["imx", "librdkafka", "librdkafka", "imx", "imx", "librdkafka"]


def test_records_are_due_at_the_rate_from_the_start() -> None:
    assert pace_deadlines(4, 2.0, 10.0) == [10.5, 11.0, 11.5, 12.0]
    with pytest.raises(ValueError):
        pace_deadlines(1, 0.0, 0.0)


def test_the_summary_takes_medians_and_the_saving_per_record_for_each_mode() -> None:
    runs = [
        run("imx", 0.30, 0.60),
        run("librdkafka", 0.03, 0.55),
        run("librdkafka", 0.02, 0.50),
        run("imx", 0.29, 0.70),
        run("imx", 0.40, 0.62),
        run("librdkafka", 0.04, 0.58),
        run("imx", 0.12, 0.20, "read"),
        run("librdkafka", 0.01, 0.25, "read"),
    ]
    figures = summary(runs, 100, 150.0, 1024)
    hop, read = figures["modes"]["hop"], figures["modes"]["read"]
    assert hop["clients"]["imx"] == {"runs": 3, "stage_cpu_ms": 0.30, "broker_cpu_ms": 0.62, "version": "imx 1.0"}
    assert hop["clients"]["librdkafka"]["stage_cpu_ms"] == 0.03
    assert hop["stage_saving_ms"] == pytest.approx(0.27)
    assert hop["machine_saving_ms"] == pytest.approx(0.30 + 0.62 - 0.03 - 0.55)
    assert hop["stage_ratio"] == 10.0
    assert read["stage_saving_ms"] == pytest.approx(0.11) and read["machine_saving_ms"] == pytest.approx(0.06)
    assert (figures["records"], figures["rate_per_s"], figures["payload_bytes"]) == (100, 150.0, 1024)
    assert len(figures["runs"]) == 8 and figures["runs"][-1]["mode"] == "read"
    lines = describe(figures)
    assert lines[0] == (
        "hop (read and publish), imx (imx 1.0): stage 0.300 ms of CPU per record, broker 0.620 ms (medians of 3 runs)"
    )
    assert lines[2].startswith("hop: librdkafka's stage takes 0.270 ms less CPU per record (imx's takes 10.0x")
    assert lines[2].endswith("0.340 ms less")
    assert lines[3].startswith("read (read only), imx") and lines[5].startswith("read: librdkafka's stage takes 0.110")


def test_a_mode_not_run_is_left_out_and_a_client_not_run_gives_no_saving() -> None:
    figures = summary([run("imx", 0.3, 0.6)], 100, 150.0, 1024)
    assert list(figures["modes"]) == ["hop"]
    assert figures["modes"]["hop"]["clients"]["librdkafka"]["runs"] == 0
    assert figures["modes"]["hop"]["stage_saving_ms"] is None and figures["modes"]["hop"]["stage_ratio"] is None
    assert describe(figures)[-1] == "hop (read and publish), librdkafka: not run"


def test_imx_runs_as_a_module_of_the_project_and_librdkafka_as_a_file() -> None:
    hop = Hop.numbered(2, "p")
    imx = stage_command("imx", Path(sys.executable), "127.0.0.1:9", hop, 5)
    assert imx[1:4] == ["-m", "tools.bench_kafka_stage", "imx"]
    assert imx[imx.index("--source") + 1] == "p-in-2" and imx[imx.index("--target") + 1] == "p-out-2"
    other = stage_command("librdkafka", Path("/venv/bin/python"), "127.0.0.1:9", hop, 5)
    assert other[0] == "/venv/bin/python" and other[1].endswith("tools/bench_kafka_stage.py")
    assert other[other.index("--group") + 1] == "p-2" and other[other.index("--records") + 1] == "5"
    reader = stage_command("imx", Path(sys.executable), "127.0.0.1:9", Hop.numbered(2, "p", mode="read"), 5)
    assert "--target" not in reader and reader[reader.index("--source") + 1] == "p-in-2"


def test_the_stage_counts_after_the_warm_up_record(capsys: pytest.CaptureFixture[str]) -> None:
    counter = Counter(2)
    counter.saw()
    assert capsys.readouterr().out == "ready\n" and counter.counted == 0 and not counter.done
    counter.saw()
    counter.saw()
    assert counter.done and capsys.readouterr().out == ""
    result = counter.result("imx", "kafka-python 3")
    assert result["records"] == 2 and result["client"] == "imx" and float(str(result["cpu_ms_per_record"])) >= 0


def stage_printing(code: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)


def test_the_run_starts_when_the_stage_says_ready_whatever_it_printed_before() -> None:
    stage = stage_printing("print('py-spy> sampling'); print('ready'); print('{}', flush=True)")
    after = wait_until_ready(stage, "imx", 30)
    assert (after + stage.communicate()[0]).strip() == b"{}"


def test_a_stage_that_ends_without_reading_is_an_error() -> None:
    stage = stage_printing("import sys; print('not ready'); sys.exit(3)")
    with pytest.raises(BenchError, match="ended before reading \\(exit 3\\)"):
        wait_until_ready(stage, "imx", 30)


def test_a_silent_stage_is_killed_at_the_deadline() -> None:
    stage = stage_printing("import time; time.sleep(60)")
    started = time.monotonic()
    with pytest.raises(BenchError, match="read nothing within"):
        wait_until_ready(stage, "librdkafka", 0.3)
    assert stage.wait(timeout=10) != 0 and time.monotonic() - started < 10


def test_the_librdkafka_stage_is_set_as_the_bus_is() -> None:
    """The stage spells the bus's settings out (its environment lacks the project); they must not drift."""
    import inspect

    from services.common import bus
    from tools import bench_kafka_stage

    assert bench_kafka_stage.FETCH_MIN_BYTES == bus.FETCH_MIN_BYTES
    assert bench_kafka_stage.FETCH_MAX_WAIT_MS == bus.FETCH_MAX_WAIT_MS
    assert bench_kafka_stage.COMMIT_INTERVAL_S == bus.COMMIT_INTERVAL_S
    bus_batch = inspect.signature(bus.StageConsumer).parameters["max_batch"].default
    assert bus_batch == bench_kafka_stage.MAX_BATCH


class _KafkaError:
    """Shaped like confluent_kafka.KafkaError: a code, and the code's constants on the class."""

    _NO_OFFSET = -168
    _TRANSPORT = -195

    def __init__(self, code: int) -> None:
        self._code = code

    def code(self) -> int:
        return self._code


class _KafkaException(Exception):
    pass


class _ConfluentKafka:
    KafkaError = _KafkaError
    KafkaException = _KafkaException


class _Refusing:
    def __init__(self, code: int) -> None:
        self.code, self.commits = code, 0

    def commit(self, asynchronous: bool) -> None:
        self.commits += 1
        raise _KafkaException(_KafkaError(self.code))


def test_the_librdkafka_stage_ends_well_when_its_last_commit_has_nothing_new() -> None:
    """librdkafka refuses a commit with nothing new since the last (what a run whose periodic commit took
    its last batch is left with): that run is not a failure. Any other refusal still is."""
    from tools.bench_kafka_stage import commit_what_is_left

    nothing_new = _Refusing(_KafkaError._NO_OFFSET)
    commit_what_is_left(nothing_new, _ConfluentKafka)
    assert nothing_new.commits == 1
    with pytest.raises(_KafkaException):
        commit_what_is_left(_Refusing(_KafkaError._TRANSPORT), _ConfluentKafka)
