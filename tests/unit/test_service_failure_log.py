"""A stage that dies says why in its log: the exception's type and the code line, never its text."""

from __future__ import annotations

import json
import logging
import sys

import pytest

from services.common.dicom.header import InvalidInstance, inspect_instance
from services.common.logs import PhiSafeJsonFormatter
from services.common.runtime import failure_site


def test_the_failure_site_is_the_innermost_code_line_relative_to_the_package() -> None:
    with pytest.raises(InvalidInstance) as caught:
        inspect_instance(b"PATIENT^SECRET" * 20, 1 << 20)
    where = failure_site(caught.value)
    assert where.startswith("services/common/dicom/header.py:"), where
    assert int(where.rsplit(":", 1)[1]) > 0


def test_the_failure_site_is_the_innermost_line_whatever_the_traceback_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "tracebacklimit", 1, raising=False)
    with pytest.raises(InvalidInstance) as caught:
        inspect_instance(b"PATIENT^SECRET" * 20, 1 << 20)
    assert failure_site(caught.value).startswith("services/common/dicom/header.py:")


def test_the_failure_record_carries_type_and_site_but_not_the_message() -> None:
    try:
        raise KeyError("PATIENT^SECRET")
    except KeyError as exc:
        record = logging.LogRecord("services.common.runtime", logging.ERROR, __file__, 1, "service failed", None, None)
        record.exc_info = (type(exc), exc, exc.__traceback__)
        record.service = "audit"
        record.where = failure_site(exc)
    line = PhiSafeJsonFormatter("audit").format(record)
    entry = json.loads(line)
    assert entry["exception_type"] == "KeyError"
    assert "test_service_failure_log.py:" in entry["where"]
    assert "SECRET" not in line
