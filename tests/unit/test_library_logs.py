"""Values from received data never reach the service log through a library's warnings (pydicom,
pynetdicom, Python warnings), whatever the library puts in its message."""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Iterator

import pytest

from services.common.dicom.header import inspect_instance
from services.common.dicom.part10 import dataset_to_bytes
from services.common.dicom.synthetic import plan_study, study_instances
from services.common.logs import WITHHELD_MESSAGE, configure_logging

CANARY_CHARSET = "CANARY7CHARSET"


@pytest.fixture
def service_log() -> Iterator[io.StringIO]:
    """configure_logging as a service's entry point calls it, its output kept in memory; the root logger
    is restored afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    configure_logging("ingest")
    output = io.StringIO()
    [handler] = root.handlers
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(output)
    try:
        yield output
    finally:
        logging.captureWarnings(False)
        root.handlers[:] = handlers
        root.setLevel(level)


def _instance_with_unknown_character_set() -> bytes:
    ds = next(study_instances(plan_study(9, "CT", 1, "RXA01")))
    ds.SpecificCharacterSet = CANARY_CHARSET
    ds.StudyDescription = "HEAD"
    return dataset_to_bytes(ds)


def test_pydicom_warnings_about_received_values_are_logged_without_the_value(
    service_log: io.StringIO,
) -> None:
    data = _instance_with_unknown_character_set()
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        logging.captureWarnings(True)  # pytest's own warning capture replaced the hook; as in the service
        header = inspect_instance(data, 10**9)
    assert header.routing["study_description"] == "HEAD"
    err = service_log.getvalue()
    assert WITHHELD_MESSAGE in err, "pydicom did warn, and the warning was logged"
    assert CANARY_CHARSET not in err


@pytest.mark.parametrize("logger", ["pydicom", "pydicom.charset", "pynetdicom.acse", "py.warnings"])
def test_library_log_messages_are_withheld(logger: str, service_log: io.StringIO) -> None:
    logging.getLogger(logger).warning(f"Invalid value for VR UI: '1.2.3.{CANARY_CHARSET}'")
    err = service_log.getvalue()
    assert CANARY_CHARSET not in err
    assert f'"logger":"{logger}"' in err and WITHHELD_MESSAGE in err


def test_python_warnings_reach_the_json_log_without_their_text(service_log: io.StringIO) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        logging.captureWarnings(True)
        warnings.warn(f"Unknown encoding '{CANARY_CHARSET}'", UserWarning, stacklevel=1)
    err = service_log.getvalue()
    assert CANARY_CHARSET not in err and WITHHELD_MESSAGE in err


def test_imx_messages_are_still_written(service_log: io.StringIO) -> None:
    logging.getLogger("services.ingest.acceptance").warning("input quarantined", extra={"reason": "not-dicom"})
    err = service_log.getvalue()
    assert '"msg":"input quarantined"' in err and '"reason":"not-dicom"' in err


def test_kafka_pythons_scram_warning_is_written_once_not_at_every_sign_in(service_log: io.StringIO) -> None:
    scram = logging.getLogger("kafka.net.sasl.scram")
    for _ in range(3):
        scram.warning("Exchanging credentials in the clear during Sasl Authentication")
        logging.getLogger("kafka.net.sasl.plain").warning("Sending username and password in the clear")
    lines = service_log.getvalue().splitlines()
    assert sum("Exchanging credentials in the clear" in line for line in lines) == 1
    assert sum("Sending username and password in the clear" in line for line in lines) == 3, "PLAIN's stays"


@pytest.mark.parametrize("library", ["pymongo.command", "grpc._server", "httpcore.http11"])
def test_libraries_that_log_documents_or_exception_text_are_withheld(service_log: io.StringIO, library: str) -> None:
    """pymongo's command log at DEBUG is the command itself: an audit record linking an original's UIDs to
    its de-identified copy's went into the service log whole; grpc's server logs an exception's text."""
    logging.getLogger().setLevel(logging.DEBUG)  # IMX_LOG_LEVEL=DEBUG
    logging.getLogger(library).warning('{"documents": [{"study_uid": "1.2.CANARY.ORIGINAL"}]}')
    err = service_log.getvalue()
    assert WITHHELD_MESSAGE in err and "CANARY" not in err
