"""`make profile`'s summary: each process's functions with the most samples of their own."""

from __future__ import annotations

from pathlib import Path

from tools.profile_summary import function_of, self_samples, summary_lines, write_summary

ROOT = "/work/main"
INGEST = [
    'process 12584:"python -m services.ingest";run (threading.py:975);'
    "receive (/work/main/services/ingest/dimse_receive.py:125) 6\n",
    'process 12584:"python -m services.ingest";run (threading.py:975);'
    "receive (/work/main/services/ingest/dimse_receive.py:131) 2\n",
    'process 12584:"python -m services.ingest";send (/work/main/.venv/lib/python3.11/site-packages/'
    "kafka/producer/sender.py:193) 2\n",
    "\n",
    "cut short by a stopped sampler",
]


def test_a_frame_is_named_by_function_and_file_from_its_package_or_the_repository() -> None:
    assert function_of("receive (/work/main/services/ingest/dimse_receive.py:125)", ROOT) == (
        "receive (services/ingest/dimse_receive.py)"
    )
    assert function_of("send (/x/.venv/lib/python3.11/site-packages/kafka/producer/sender.py:193)", ROOT) == (
        "send (kafka/producer/sender.py)"
    )
    assert function_of("java/lang/Thread.run") == "java/lang/Thread.run"


def test_self_samples_sum_a_functions_lines_and_skip_what_is_not_a_stack() -> None:
    total, by_function = self_samples(INGEST, ROOT)
    assert total == 10
    assert by_function == {"receive (services/ingest/dimse_receive.py)": 8, "send (kafka/producer/sender.py)": 2}


def test_the_summary_gives_each_functions_share_most_first() -> None:
    assert summary_lines("ingest", INGEST, ROOT, top=1) == [
        "ingest: 10 samples; the functions with the most of their own:",
        "   80.0%  receive (services/ingest/dimse_receive.py)",
    ]
    assert summary_lines("routing", [], ROOT) == ["routing: no samples"]


def test_the_summary_file_covers_every_profile_in_the_folder(tmp_path: Path) -> None:
    (tmp_path / "ingest.txt").write_text("".join(INGEST[:3]))
    (tmp_path / "kafka.txt").write_text("java/lang/Thread.run;kafka/server/KafkaApis.handle 3\n")
    (tmp_path / "ingest.txt.log").write_text("py-spy> Sampling process 25 times a second\n")

    summary = write_summary(tmp_path, ROOT)

    text = summary.read_text()
    assert text.index("ingest: 10 samples") < text.index("kafka: 3 samples")
    assert "  100.0%  kafka/server/KafkaApis.handle" in text
    assert "py-spy>" not in text
    # Written again over the same folder, the summary does not summarise itself.
    assert write_summary(tmp_path, ROOT).read_text() == text
