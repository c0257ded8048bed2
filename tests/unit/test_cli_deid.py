"""`imx deid`: files and folders, built-in or file profiles, refusals counted, no server needed."""

from __future__ import annotations

import json
from io import BytesIO
from pathlib import Path

from pydicom import dcmread
from typer.testing import CliRunner

from services.cli.main import app
from services.deid.engine import BASIC, deidentify
from tests.unit.deid.builders import ct_dataset, to_bytes

runner = CliRunner()


def _tree(root: Path) -> list[Path]:
    (root / "study-a").mkdir(parents=True)
    flagged = ct_dataset(instance=3)
    flagged.BurnedInAnnotation = "YES"  # refused: no pixel rule
    files = [root / "study-a" / "1.dcm", root / "study-a" / "2.dcm", root / "3.dcm"]
    for path, ds in zip(files, [ct_dataset(instance=1), ct_dataset(instance=2), flagged], strict=True):
        path.write_bytes(to_bytes(ds))
    return files


def test_a_folder_is_mirrored_with_the_same_bytes_as_the_service_and_refusals_are_counted(tmp_path: Path) -> None:
    files = _tree(tmp_path / "in")
    key_file = tmp_path / "recipient.key"
    result = runner.invoke(app, ["deid", str(tmp_path / "in"), str(tmp_path / "out"), "--key-file", str(key_file)])
    assert result.exit_code == 1, result.output  # something was refused
    assert "2 de-identified" in result.output and "1 refused: burned-in-annotation" in result.output
    key = bytes.fromhex(key_file.read_text().strip())
    for source in files[:2]:
        out = tmp_path / "out" / source.relative_to(tmp_path / "in")
        assert out.read_bytes() == deidentify(source.read_bytes(), BASIC, key).data
    assert not (tmp_path / "out" / "3.dcm").exists()
    assert "Thistlewood" not in result.output


def test_a_profile_file_is_used_as_written(tmp_path: Path) -> None:
    source = tmp_path / "in.dcm"
    source.write_bytes(to_bytes(ct_dataset()))
    profile = tmp_path / "keeps-sex.json"
    profile.write_text(json.dumps({"name": "keeps-dates", "options": ["retain-longitudinal-full-dates"]}))
    args = [
        "deid",
        str(source),
        str(tmp_path / "out.dcm"),
        "--profile",
        str(profile),
        "--key-file",
        str(tmp_path / "k"),
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    out = dcmread(BytesIO((tmp_path / "out.dcm").read_bytes()))
    assert out.StudyDate == ct_dataset().StudyDate, "full dates kept, as the file's option says"
    assert out.DeidentificationMethod[0] == "imx keeps-dates v1"


def test_bad_input_is_refused_with_a_reason_and_no_traceback(tmp_path: Path) -> None:
    source = tmp_path / "in.dcm"
    source.write_bytes(to_bytes(ct_dataset()))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"name": "x", "options": ["no-such-option"]}))
    cases = [
        (["--profile", "nope"], "unknown profile"),
        (["--profile", str(bad)], "bad profile file"),
    ]
    for extra, message in cases:
        result = runner.invoke(
            app, ["deid", str(source), str(tmp_path / "o.dcm"), "--key-file", str(tmp_path / "k"), *extra]
        )
        assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
    (tmp_path / "short.key").write_text("zz-not-hex")
    short = ["deid", str(source), str(tmp_path / "o.dcm"), "--key-file", str(tmp_path / "short.key")]
    result = runner.invoke(app, short)
    assert result.exit_code == 2 and "at least 16 bytes" in result.output
    result = runner.invoke(app, ["deid", str(source), str(source)])
    assert result.exit_code == 2 and "overwrite the originals" in result.output


def test_a_file_ingest_would_refuse_is_refused_here_too_not_turned_into_a_stub(tmp_path: Path) -> None:
    """The service only de-identifies what ingest accepted. A header cut short was "1 de-identified" here,
    written out as a few hundred bytes without the pixels."""
    whole = to_bytes(ct_dataset())
    (tmp_path / "in").mkdir()
    for cut in (300, 600, len(whole) // 2):
        (tmp_path / "in" / f"cut-{cut}.dcm").write_bytes(whole[:cut])
    args = ["deid", str(tmp_path / "in"), str(tmp_path / "out"), "--key-file", str(tmp_path / "k")]
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    assert "3 refused: truncated" in result.output and "de-identified" not in result.output
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.dcm"))


def test_outputs_that_cannot_be_written_and_empty_inputs_are_said_plainly_without_paths(tmp_path: Path) -> None:
    """A traceback named the file it failed on, and folder names of exported studies carry patients' names."""
    study = tmp_path / "in" / "SMITH^JOHN"
    study.mkdir(parents=True)
    (study / "1.dcm").write_bytes(to_bytes(ct_dataset()))
    key = ["--key-file", str(tmp_path / "k")]
    (tmp_path / "a-file").write_text("")
    result = runner.invoke(app, ["deid", str(tmp_path / "in"), str(tmp_path / "a-file"), *key])
    assert result.exit_code == 2 and "output must be a folder" in result.output
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "SMITH^JOHN").write_text("")  # where the study's folder would go
    result = runner.invoke(app, ["deid", str(tmp_path / "in"), str(tmp_path / "out"), *key])
    assert result.exit_code == 2 and "could not be read or written" in result.output
    assert "SMITH" not in result.output and isinstance(result.exception, SystemExit)  # an exit, not a traceback
    (tmp_path / "empty").mkdir()
    result = runner.invoke(app, ["deid", str(tmp_path / "empty"), str(tmp_path / "o"), *key])
    assert result.exit_code == 1 and "no files to de-identify" in result.output
    result = runner.invoke(
        app, ["deid", str(tmp_path / "nothing-here"), str(tmp_path / "o"), "--key-file", str(tmp_path / "new.key")]
    )
    assert result.exit_code == 2 and not (tmp_path / "new.key").exists(), "no key made for a run that did nothing"


def test_a_profile_nested_past_the_parser_and_a_file_for_a_folder_are_said_plainly(tmp_path: Path) -> None:
    source = tmp_path / "in.dcm"
    source.write_bytes(to_bytes(ct_dataset()))
    deep = tmp_path / "deep.json"
    deep.write_text('{"name": "x", "overrides": ' + "[" * 100_000 + "]" * 100_000 + "}")
    for command in (
        ["deid", str(source), str(tmp_path / "o.dcm"), "--key-file", str(tmp_path / "k"), "--profile", str(deep)],
        ["profiles", "add", "x", "--from-file", str(deep)],
    ):
        result = runner.invoke(app, command)
        assert result.exit_code in (1, 2) and "nested too deeply" in " ".join(result.output.split()), result.output
    result = runner.invoke(app, ["demo-data", "--out", str(source), "--studies", "1"])
    assert result.exit_code == 2 and "is a file" in " ".join(result.output.split())


def test_hidden_files_and_folders_are_skipped_and_broken_links_said(tmp_path: Path) -> None:
    files = _tree(tmp_path / "in")
    hidden = tmp_path / "in" / ".snapshots"
    hidden.mkdir()
    (hidden / "1.dcm").write_bytes(files[0].read_bytes())  # a copy in a hidden folder: not an input
    (tmp_path / "in" / "._1.dcm").write_bytes(b"\0\5\26\7 AppleDouble")
    (tmp_path / "in" / "gone.dcm").symlink_to(tmp_path / "nowhere.dcm")
    result = runner.invoke(
        app, ["deid", str(tmp_path / "in"), str(tmp_path / "out"), "--key-file", str(tmp_path / "k")]
    )
    assert "2 de-identified" in result.output and "1 refused: burned-in-annotation" in result.output
    assert "links under the input whose files are gone: 1 (skipped)" in result.output
    assert not (tmp_path / "out" / ".snapshots").exists()


def test_a_run_that_left_part_of_the_input_out_exits_1_even_when_every_file_found_was_de_identified(
    tmp_path: Path,
) -> None:
    """A script took exit 0 for "the whole folder is de-identified" while a link's file was gone."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "1.dcm").write_bytes(to_bytes(ct_dataset(instance=1)))
    args = ["deid", str(tmp_path / "in"), str(tmp_path / "out"), "--key-file", str(tmp_path / "k")]
    whole = runner.invoke(app, args)
    assert whole.exit_code == 0, whole.output
    (tmp_path / "in" / "gone.dcm").symlink_to(tmp_path / "nowhere.dcm")
    (tmp_path / "in" / "up").symlink_to(tmp_path)  # a link out of the input: not followed
    partial = runner.invoke(app, args)
    assert "1 de-identified" in partial.output
    assert "links under the input whose files are gone: 1 (skipped)" in partial.output
    assert "links to folders outside the input, not followed: 1 (skipped)" in partial.output
    assert partial.exit_code == 1, partial.output


def test_a_target_ending_in_a_slash_is_a_new_folder(tmp_path: Path) -> None:
    source = tmp_path / "in.dcm"
    source.write_bytes(to_bytes(ct_dataset()))
    result = runner.invoke(app, ["deid", str(source), f"{tmp_path / 'newdir'}/", "--key-file", str(tmp_path / "k")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "newdir" / "in.dcm").is_file()


def test_demo_data_stops_before_the_disk_is_full_and_says_so(tmp_path: Path, monkeypatch) -> None:
    from collections import namedtuple

    from services.cli import files

    usage = namedtuple("usage", "total used free")
    free = iter([2 << 30, 2 << 30, 512 << 20])  # room for two studies, then less than the 1 GiB kept free
    monkeypatch.setattr(files.shutil, "disk_usage", lambda _path: usage(0, 0, next(free)))
    result = runner.invoke(app, ["demo-data", "--out", str(tmp_path / "demo"), "--studies", "5"])
    assert result.exit_code == 1, result.output
    said = " ".join(result.output.split())
    assert "stopped after 2 of 5 studies" in said and "in 2 studies" in said
    assert len(json.loads((tmp_path / "demo.manifest.json").read_text())["studies"]) == 2


def test_the_inputs_own_folder_as_the_output_is_refused_and_the_original_kept(tmp_path: Path) -> None:
    """`imx deid scan.dcm .` in the file's folder wrote the de-identified copy over the original (and, for a
    file read through a memory map, cut it to a few KB part way)."""
    source = tmp_path / "scan.dcm"
    original = to_bytes(ct_dataset())
    source.write_bytes(original)
    result = runner.invoke(app, ["deid", str(source), str(tmp_path), "--key-file", str(tmp_path / "k.key")])
    assert result.exit_code == 2 and "would overwrite the originals" in result.output, result.output
    assert source.read_bytes() == original


def test_an_interrupted_write_leaves_no_partial_output(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Ctrl-C part way left a header-only file among the outputs, looking like a finished one."""
    from services.deid import files

    source = tmp_path / "scan.dcm"
    source.write_bytes(to_bytes(ct_dataset()))
    writes = []

    def interrupted(fd: int, piece: bytes) -> None:
        writes.append(len(piece))
        if len(writes) == 2:
            raise KeyboardInterrupt
        files.os.write(fd, piece)

    monkeypatch.setattr(files, "write_all", interrupted)
    monkeypatch.setattr(files, "windows", lambda chunks: [bytes(c) for c in chunks] * 2)
    out = tmp_path / "out"
    out.mkdir()
    runner.invoke(app, ["deid", str(source), str(out / "scan.dcm"), "--key-file", str(tmp_path / "k.key")])
    assert list(out.iterdir()) == []
