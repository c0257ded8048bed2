"""Where `make bench` keeps its generated instances: outside `var/`, in a folder that changes with the
generator's source."""

from __future__ import annotations

from pathlib import Path

import pytest

from tools.bench_corpus import GENERATORS, bench_data, corpus_folder, default_root, generator_key


def test_the_key_changes_with_any_generator_source_and_only_with_them() -> None:
    sources = [b"def plan_study(): ...", b"def dataset_to_bytes(): ..."]
    key = generator_key(sources)
    assert generator_key(list(sources)) == key
    assert generator_key([sources[0] + b"\n# changed", sources[1]]) != key
    assert generator_key([sources[0], sources[1] + b" "]) != key
    # Moving bytes from one file to the other is a different generator, not the same bytes run together.
    assert generator_key([sources[0] + sources[1][:3], sources[1][3:]]) != key


def test_the_corpus_lives_in_the_cache_make_clean_leaves(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("IMX_CACHE", str(tmp_path / "cache"))
    assert default_root() == tmp_path / "cache" / "bench"
    assert corpus_folder(default_root(), 2000, "abc") == tmp_path / "cache" / "bench" / "ct-2000-abc"


def test_instances_are_generated_once_and_a_half_written_folder_again(tmp_path: Path) -> None:
    files = bench_data(tmp_path, 3, per_study=2)
    assert [f.name for f in files] == ["000000.dcm", "000001.dcm", "000002.dcm"]
    sources = [Path(m.__file__ or "").read_bytes() for m in GENERATORS]
    folder = corpus_folder(tmp_path, 3, generator_key(sources))
    assert files[0].parent == folder and (folder / ".complete").exists()
    first = files[0].read_bytes()
    files[0].write_bytes(b"kept: a complete folder is reused, not made again")
    assert bench_data(tmp_path, 3, per_study=2)[0].read_bytes().startswith(b"kept")
    (folder / ".complete").unlink()  # a run that died half-way
    again = bench_data(tmp_path, 3, per_study=2)
    assert again[0].read_bytes() == first  # deterministic: the same bytes again
