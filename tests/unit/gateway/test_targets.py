"""Target URLs: what each scheme means and a clear refusal for what it cannot mean."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.gateway.targets import (
    DEFAULT_CALLING_AE,
    DicomTarget,
    DicomWebTarget,
    FolderTarget,
    TargetError,
    parse_target,
)


def test_dicom_urls_name_the_called_ae_host_and_port_and_optionally_our_ae() -> None:
    assert parse_target("dicom://PACS@10.0.0.5:104") == DicomTarget("PACS", "10.0.0.5", 104, DEFAULT_CALLING_AE)
    assert parse_target("dicom://PACS@pacs.example:11112?calling=IMX-A") == DicomTarget(
        "PACS", "pacs.example", 11112, "IMX-A"
    )


def test_dicomweb_urls_are_a_base_and_stow_posts_to_its_studies() -> None:
    target = parse_target("https://pacs.example:8443/dicom-web/")
    assert target == DicomWebTarget("https://pacs.example:8443/dicom-web")
    assert isinstance(target, DicomWebTarget) and target.stow_url == "https://pacs.example:8443/dicom-web/studies"


def test_file_urls_are_absolute_folders() -> None:
    assert parse_target("file:///srv/images") == FolderTarget(Path("/srv/images"))


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("dicom://10.0.0.5:104", "called AE title"),
        ("dicom://PACS@10.0.0.5", "port"),
        ("dicom://PACS@10.0.0.5:99999", "port"),
        ("dicom://WAY-TOO-LONG-AE-TITLE@h:104", "1-16"),
        ("dicom://PACS@h:104?calling=A%5CB", "calling AE"),
        ("dicom://PACS@h:104?called=X", "unknown option"),
        ("https:///dicom-web", "host"),
        ("https://user:secret@pacs/dicom-web", "credentials"),
        ("file://server/share", "no host"),
        ("file:relative", "absolute"),
        ("ftp://pacs/x", "unknown target"),
        ("pacs:104", "unknown target"),
    ],
)
def test_bad_urls_are_refused_with_the_reason(url: str, says: str) -> None:
    with pytest.raises(TargetError, match=says):
        parse_target(url)


def test_a_password_in_a_target_is_refused_without_being_printed() -> None:
    """The https refusal quoted the URL whole, password and all, on the partner's terminal; a DICOM
    target dropped its password in silence."""
    for url in ("https://user:S3cret@pacs.example/dw", "dicom://PACS:S3cret@pacs.example:104"):
        with pytest.raises(TargetError) as refused:
            parse_target(url)
        assert "S3cret" not in str(refused.value) and ":***@" in str(refused.value)


def test_an_empty_calling_title_and_port_zero_are_refused() -> None:
    for url in ("dicom://PACS@pacs.example:104?calling=", "https://pacs.example:0/dw"):
        with pytest.raises(TargetError):
            parse_target(url)
