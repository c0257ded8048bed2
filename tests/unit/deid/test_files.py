"""De-identifying a file into a file (`imx deid`, `make bench-deid`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.deid.engine import BASIC, DeidError, deidentify
from services.deid.files import deidentify_file

from .builders import KEY, ct_dataset, to_bytes


def test_the_written_file_is_exactly_the_de_identified_instance(tmp_path: Path) -> None:
    source, target = tmp_path / "in.dcm", tmp_path / "out.dcm"
    source.write_bytes(to_bytes(ct_dataset()))
    target.write_bytes(b"x" * 10_000_000)  # a longer old file is replaced, not overwritten in part
    result = deidentify_file(source, target, BASIC, KEY)
    assert len(result.chunks) == 2, "the fast path hands the pixels over as a view"
    assert target.read_bytes() == result.data == deidentify(source.read_bytes(), BASIC, KEY).data


def test_a_refused_instance_writes_nothing(tmp_path: Path) -> None:
    ds = ct_dataset()
    ds.BurnedInAnnotation = "YES"
    source, target = tmp_path / "in.dcm", tmp_path / "out.dcm"
    source.write_bytes(to_bytes(ds))
    with pytest.raises(DeidError):
        deidentify_file(source, target, BASIC, KEY)
    assert not target.exists()
