"""The pure parts of `make chaos` (tools/chaos_*.py): the malformed-input generator, the ledger's
reconciliation and the figures."""

from __future__ import annotations

import tracemalloc
import zlib
from collections import Counter
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import dcmread

from tools.chaos import meta_end, parse_args
from tools.chaos_figures import ChaosRun, FaultResult, misses, recovery_max, result_line
from tools.chaos_inputs import (
    KINDS,
    base_dataset,
    deep_nesting,
    deflate_bomb_body,
    encode_body,
    file_meta_bytes,
    malformed_input,
)
from tools.chaos_ledger import (
    Arrival,
    DoorAnswer,
    Ledger,
    caught_up,
    fuzz_figures,
    mark,
    read_mark,
    reconcile,
)
from tools.chaos_partner import folder_bytes, sop_uid_of
from tools.chaos_send import c_store_outcome, stow_outcome

EXPLICIT = "1.2.840.10008.1.2.1"
TOKEN = b"\x01\x02\x03\x04\x05\x06\x07\x08"


# --- malformed inputs ---------------------------------------------------------------------------


def test_the_same_seed_and_index_give_the_same_bytes() -> None:
    for index in range(40):
        assert malformed_input(3, index) == malformed_input(3, index)
    assert malformed_input(3, 5).part10 != malformed_input(4, 5).part10


def test_every_kind_comes_in_a_few_hundred_inputs() -> None:
    kinds = Counter(malformed_input(1, i).kind for i in range(240))
    assert set(kinds) == set(KINDS)


def test_each_input_has_a_uid_of_its_own() -> None:
    uids = [malformed_input(1, i).sop_uid for i in range(100)]
    assert len(set(uids)) == len(uids)


def test_the_base_instance_is_valid_dicom() -> None:
    ds = base_dataset(1, 7)
    body = encode_body(ds, "1.2.840.10008.1.2.1")
    assert b"\xe0\x7f\x10\x00" in body


def test_a_deflate_bomb_inflates_to_its_size_and_stays_small() -> None:
    header = encode_body(base_dataset(1, 1), "1.2.840.10008.1.2.1")
    bomb = deflate_bomb_body(header[:64], 64 * 1024 * 1024)
    inflated = zlib.decompressobj(-15).decompress(bomb)
    assert len(inflated) > 64 * 1024 * 1024
    assert len(bomb) < 200_000


def test_deep_nesting_closes_every_sequence_it_opens() -> None:
    nested = deep_nesting(100)
    assert nested.count(b"\xfe\xff\x00\xe0") == 100  # items opened
    assert nested.count(b"\xfe\xff\x0d\xe0") == 100  # items closed
    assert nested.count(b"\xfe\xff\xdd\xe0") == 100  # sequences closed


def test_truncated_inputs_are_shorter_than_the_file() -> None:
    truncated = [malformed_input(2, i) for i in range(100) if malformed_input(2, i).kind == "truncated"]
    assert truncated
    for item in truncated:
        whole = file_meta_bytes(item.sop_class, item.sop_uid, EXPLICIT) + encode_body(
            base_dataset(2, item.index), EXPLICIT
        )
        assert 132 <= len(item.part10) < len(whole)
        assert whole.startswith(item.part10)


def test_meta_end_finds_the_data_set() -> None:
    item = malformed_input(1, 0)
    ds = base_dataset(1, 0)
    part10 = file_meta_bytes(item.sop_class, item.sop_uid, EXPLICIT) + encode_body(ds, EXPLICIT)
    start = meta_end(part10)
    assert part10[start : start + 4] == b"\x08\x00\x16\x00"  # (0008,0016) SOP Class UID comes first
    assert dcmread(BytesIO(part10)).SOPInstanceUID == ds.SOPInstanceUID


# --- ledger -------------------------------------------------------------------------------------


def test_a_mark_is_found_again_in_a_stored_object() -> None:
    data = mark(b"header" + bytes(100), TOKEN, 4242)
    stored = b"new header, other UIDs " + data[6:]
    assert read_mark(stored, TOKEN) == 4242
    assert read_mark(stored, b"\x09" * 8) is None
    with pytest.raises(ValueError):
        mark(bytes(100), b"short", 1)


def arrival(index: int | None, uid: str = "", sha: str = "s", at: float = 10.0) -> Arrival:
    return Arrival(uid or f"uid-{index}", sha, index, at)


def test_acknowledged_and_arrived_is_not_lost() -> None:
    ledger = Ledger(acknowledged={0: 1.0, 1: 2.0, 2: 3.0})
    ledger.arrivals = [arrival(0), arrival(1)]
    ledger.source_uids = {0: "a", 1: "b", 2: "c"}
    assert reconcile(ledger).lost == 1
    ledger.note_quarantine("c", "deid:phi-leak")
    result = reconcile(ledger)
    assert (result.lost, result.quarantined, result.arrived) == (0, 1, 2)


def test_sent_but_never_acknowledged_is_not_owed() -> None:
    ledger = Ledger(acknowledged={0: 1.0})
    ledger.source_uids = {0: "a", 1: "b"}
    ledger.arrivals = [arrival(0)]
    assert reconcile(ledger).lost == 0


def test_the_same_object_twice_is_a_redelivery_not_a_duplicate() -> None:
    ledger = Ledger(acknowledged={0: 1.0})
    ledger.arrivals = [arrival(0, "x", "h"), arrival(0, "x", "h")]
    result = reconcile(ledger)
    assert (result.duplicated, result.redelivered) == (0, 1)


def test_an_instance_stored_under_a_new_uid_or_new_content_is_duplicated() -> None:
    ledger = Ledger(acknowledged={0: 1.0, 1: 1.0})
    ledger.arrivals = [arrival(0, "x", "h"), arrival(0, "y", "h"), arrival(1, "z", "h1"), arrival(1, "z", "h2")]
    assert reconcile(ledger).duplicated == 2


def test_objects_without_this_runs_mark_are_foreign() -> None:
    ledger = Ledger()
    ledger.arrivals = [arrival(None, "old")]
    assert reconcile(ledger).foreign == 1


def test_caught_up_counts_only_what_was_acknowledged_before() -> None:
    ledger = Ledger(acknowledged={0: 1.0, 1: 5.0})
    ledger.arrivals = [arrival(0)]
    assert caught_up(ledger, 2.0)
    assert not caught_up(ledger, 6.0)


# --- malformed inputs' accounting ---------------------------------------------------------------


def answer(outcome: str, uid: str = "u", seconds: float = 0.1, http: int = 0, kind: str = "garbage") -> DoorAnswer:
    reason = "C000 not-dicom" if outcome == "rejected" else ""
    return DoorAnswer(0, kind, "stow-rs", uid, outcome, reason, seconds, http)


def test_rejected_with_a_reason_and_quarantined_is_accounted_for() -> None:
    figures = fuzz_figures([answer("rejected"), answer("rejected")], set(), {}, door_quarantines=2)
    assert (figures.rejected, figures.unaccounted) == (2, 0)


def test_a_rejection_without_its_quarantine_event_is_unaccounted() -> None:
    assert fuzz_figures([answer("rejected"), answer("rejected")], set(), {}, door_quarantines=1).unaccounted == 1


def test_accepted_inputs_must_be_delivered_or_quarantined() -> None:
    answers = [answer("accepted", "a"), answer("accepted", "b"), answer("accepted", "c")]
    figures = fuzz_figures(answers, {"a"}, {"b": "deid:x"}, door_quarantines=0)
    assert figures.unaccounted == 1


def test_errors_5xx_and_hangs_are_counted() -> None:
    answers = [answer("error", http=500), answer("accepted", "a", seconds=6.0), answer("refused")]
    figures = fuzz_figures(answers, {"a"}, {}, door_quarantines=0)
    assert (figures.fivexx, figures.hangs, figures.errors, figures.unaccounted, figures.refused) == (1, 1, 1, 1, 1)
    assert figures.slowest_s == 6.0
    assert figures.by_kind == {"garbage": {"error": 1, "accepted": 1, "refused": 1}}


def test_door_answers_are_read_as_a_sender_reads_them() -> None:
    assert c_store_outcome(0x0000, "") == ("accepted", "0000")
    assert c_store_outcome(0xB007, "") == ("accepted", "B007")
    assert c_store_outcome(0xA700, "") == ("retry", "A700")
    assert c_store_outcome(0xC000, "not-dicom") == ("rejected", "C000 not-dicom")
    assert c_store_outcome(0x0110, "bug") == ("error", "0110")
    assert c_store_outcome(None, "") == ("error", "no response")
    failed = {"00081198": {"Value": [{"00081197": {"Value": [49152]}}]}}
    assert stow_outcome(409, failed) == ("rejected", "409 49152")
    assert stow_outcome(200, {}) == ("accepted", "200")
    assert stow_outcome(503, {}) == ("retry", "503")
    assert stow_outcome(500, {}) == ("error", "500")


# --- figures ------------------------------------------------------------------------------------


def test_the_json_line_has_the_issues_keys_and_says_what_was_missed() -> None:
    ledger = Ledger(acknowledged={0: 1.0, 1: 1.0})
    ledger.arrivals = [arrival(0)]
    fuzz = fuzz_figures([answer("accepted", "a", seconds=7.0)], {"a"}, {}, door_quarantines=0)
    run = ChaosRun(
        reconcile(ledger),
        fuzz,
        [FaultResult("ingest", 12.34), FaultResult("broker", None)],
        {"deid": 1},
        {"ingest": 300.0, "kafka": 1100.0},
    )
    figures = result_line(run, limit_s=900.0)
    for key in ("lost", "duplicated", "crashes", "hangs", "unaccounted", "max_rss_mb", "recovery_s_max"):
        assert key in figures
    assert (figures["lost"], figures["crashes"], figures["hangs"], figures["max_rss_mb"]) == (1, 1, 1, 1100.0)
    assert figures["recovery_s_max"] == 900.0  # the broker never caught up: the limit counts
    assert figures["recovery_s"] == {"ingest": 12.3, "broker": None}
    assert len(figures["missed"]) == 4


def test_no_misses_when_every_target_is_met() -> None:
    figures = {"lost": 0, "duplicated": 0, "crashes": 0, "hangs": 0, "unaccounted": 0, "max_rss_mb": 1023.9}
    assert misses(figures) == []
    assert recovery_max([FaultResult("a", 3.0), FaultResult("b", 5.5)], 900) == 5.5


def test_quick_mode_shortens_the_faults() -> None:
    quick, full = parse_args(["--quick"]), parse_args([])
    assert (quick.pacs_down_s, quick.inputs) == (20.0, 300)
    assert (full.pacs_down_s, full.freeze_s, full.inputs) == (600.0, 60.0, 10_000)
    assert parse_args(["--quick", "--pacs-down-s", "45"]).pacs_down_s == 45.0
    with pytest.raises(SystemExit):
        parse_args(["--faults", "ingest,volcano"])


def test_the_scanner_reads_the_uid_of_every_bad_vr_input_it_may_find_at_the_pacs() -> None:
    """A pass-through route delivers a malformed input as sent; the PACS's file meta (from the C-STORE
    request) names it even when the data set's own UID has a VR pydicom cannot decode (the scanner
    thread died on one in a full run)."""
    found = 0
    for index in range(400):
        item = malformed_input(9, index)
        if item.kind != "bad-vr":
            continue
        stored = file_meta_bytes(item.sop_class, item.sop_uid, item.transfer_syntax) + item.dataset
        assert sop_uid_of(stored) == item.sop_uid
        found += 1
    assert found > 10
    assert sop_uid_of(b"\0" * 128 + b"DICM" + b"\xff" * 64) == ""


def test_the_scanner_reads_a_stored_deflate_bomb_s_uid_without_inflating_it() -> None:
    """A PACS that takes deflated data sets stores a deflate bomb as sent; the scanner finds its UID in
    the file meta (before: pydicom inflated the whole body first, 768 MiB in the chaos process)."""
    bomb = next(item for index in range(400) if (item := malformed_input(9, index)).kind == "deflate-bomb")
    tracemalloc.start()
    try:
        assert sop_uid_of(bomb.part10) == bomb.sop_uid
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1024 * 1024, f"{peak} bytes held to read a UID"


def test_folder_bytes_counts_the_files_of_a_folder(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"x" * 10)
    (tmp_path / ".partial").write_bytes(b"y" * 5)
    (tmp_path / "below").mkdir()
    (tmp_path / "below" / "c").write_bytes(b"z" * 100)
    assert folder_bytes(tmp_path) == 15
    assert folder_bytes(tmp_path / "missing") == 0
