"""A small object's whole answer (services/delivery/object_response.py): opened and checked against its
recorded size before any answer starts, and its bytes as the body where the server offers no
zero-copy send (the sendfile path: tests/integration/test_http_zero_copy.py, delivery's DICOMweb tests)."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from services.delivery.object_response import ObjectResponse


def test_a_file_not_of_its_recorded_size_or_gone_is_refused_before_the_answer_starts(tmp_path: Path) -> None:
    path = tmp_path / "object.dcm"
    path.write_bytes(b"DICM" * 10)
    ObjectResponse(path, 40, "application/dicom").handle.close()
    with pytest.raises(OSError):
        ObjectResponse(path, 41, "application/dicom")  # not the object the index names: answered 410
    path.unlink()
    with pytest.raises(OSError):
        ObjectResponse(path, 40, "application/dicom")


def test_without_a_zero_copy_send_the_file_is_read_and_sent_as_the_body(tmp_path: Path) -> None:
    path = tmp_path / "object.dcm"
    path.write_bytes(b"DICM" * 10)
    app = FastAPI()

    @app.get("/object")
    def answer() -> ObjectResponse:
        return ObjectResponse(path, 40, "application/dicom")

    got = TestClient(app).get("/object")
    assert got.status_code == 200
    assert got.headers["content-length"] == "40"
    assert got.headers["content-type"] == "application/dicom"
    assert got.content == b"DICM" * 10
