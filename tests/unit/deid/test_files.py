"""De-identifying a file into a file (`imx deid`, `make bench-deid`)."""

from __future__ import annotations

import struct
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


def test_an_instance_the_pydicom_path_would_read_into_too_many_objects_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Ingest lets an explicit VR header of millions of items through (its byte walk holds none); one the
    raw engine handed to the pydicom path took 1.8 GB for 3 M items. Refused before that read."""
    from services.deid import files
    from services.deid.files import deidentified

    ds = ct_dataset()
    body = struct.pack("<HHI", 0xFFFE, 0xE000, 0) * 3_000 + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    items = struct.pack("<HH2sHI", 0x7FD1, 0x1012, b"SQ", 0, 0xFFFFFFFF) + body
    data = to_bytes(ds)
    pixels = data.index(struct.pack("<HH", 0x7FE0, 0x0010))
    # A private block before the pixel data, and a trailing element after them: the raw engine declines it.
    flood = struct.pack("<HH2sH", 0x7FD1, 0x0010, b"LO", 4) + b"ACME" + items
    trailing = struct.pack("<HH2sHI", 0xFFFC, 0xFFFC, b"OB", 0, 0)
    data = data[:pixels] + flood + data[pixels:] + trailing
    monkeypatch.setattr(files, "WHOLE_READ_MAX_ELEMENTS", 2_000)
    with pytest.raises(DeidError, match="too-many-elements"), deidentified(data, BASIC, KEY):
        pass
    monkeypatch.setattr(files, "WHOLE_READ_MAX_ELEMENTS", 10_000)
    with deidentified(data, BASIC, KEY) as result:
        assert result.sop_instance_uid


def test_the_whole_read_check_refuses_only_for_what_reading_whole_would_cost() -> None:
    """Its file-meta and character-set checks are ingest's: an instance they would refuse, which the pydicom
    path releases (one stored before those checks, or `imx deid` on a file), was refused as not-dicom."""
    from services.deid.files import deidentified

    trailing = struct.pack("<HH2sHI", 0xFFFC, 0xFFFC, b"OB", 0, 0)  # the raw engine declines it
    data = bytearray(to_bytes(ct_dataset()) + trailing)
    at = data.index(struct.pack("<HH", 0x0002, 0x0012) + b"UI")
    data[at + 8 : at + 10] = b"x."  # an Implementation Class UID ingest would call invalid
    with deidentified(bytes(data), BASIC, KEY) as result:
        assert result.sop_instance_uid
