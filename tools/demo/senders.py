"""Clients the demo and the benchmark send with: a C-STORE SCU (pynetdicom) and a STOW-RS client (httpx)."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from pathlib import Path

import httpx
from pydicom import dcmread
from pynetdicom import AE
from pynetdicom.presentation import build_context

from services.common.dicom.sender_responses import keep_responses_for_sender

EXPLICIT_LE = "1.2.840.10008.1.2.1"


def sop_classes(files: Sequence[Path]) -> list[str]:
    classes: dict[str, None] = {}
    for path in files:
        classes[str(dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"]).SOPClassUID)] = None
    return list(classes)


def c_store(
    files: Sequence[Path],
    calling_ae: str,
    host: str,
    port: int,
    called_ae: str = "IMX",
    on_sent: Callable[[int], None] | None = None,
    on_refusal: Callable[[int | None], None] | None = None,
) -> int:
    """Send over one association; returns how many the SCP accepted (status 0x0000). `on_refusal` hears
    every other answer's status (None: no answer at all)."""
    ae = AE(ae_title=calling_ae)
    ae.maximum_pdu_size = 1024 * 1024
    contexts = [build_context(uid, [EXPLICIT_LE]) for uid in sop_classes(files)]
    assoc = ae.associate(host, port, contexts=contexts, ae_title=called_ae, max_pdu=1024 * 1024)
    if not assoc.is_established:
        raise ConnectionError(f"association with {called_ae}@{host}:{port} as {calling_ae} was refused")
    keep_responses_for_sender(assoc)  # else pynetdicom's reactor may take and drop an answer
    accepted = 0
    try:
        for path in files:
            # A path is streamed from the file without decoding the dataset (pynetdicom >= 2).
            status = assoc.send_c_store(path)
            if status and status.Status == 0x0000:
                accepted += 1
            elif on_refusal:
                on_refusal(int(status.Status) if status else None)
            if on_sent:
                on_sent(1)
    finally:
        assoc.release()
    return accepted


def stow_rs(
    files: Sequence[Path],
    base_url: str,
    api_key: str,
    batch: int = 20,
    on_sent: Callable[[int], None] | None = None,
) -> int:
    """POST batches as multipart/related; returns how many instances the server stored."""
    stored = 0
    with httpx.Client(timeout=120) as client:
        for start in range(0, len(files), batch):
            chunk = files[start : start + batch]
            boundary = secrets.token_hex(16)
            body = bytearray()
            for path in chunk:
                body += f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
                body += path.read_bytes() + b"\r\n"
            body += f"--{boundary}--\r\n".encode()
            response = client.post(
                f"{base_url}/studies",
                content=bytes(body),
                headers={
                    "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
                    "Accept": "application/dicom+json",
                    "Authorization": f"Bearer {api_key}",
                },
            )
            if response.status_code not in (200, 202, 409):
                raise ConnectionError(f"STOW-RS answered {response.status_code}: {response.text[:200]}")
            stored += len(response.json().get("00081199", {}).get("Value", []))
            if on_sent:
                on_sent(len(chunk))
    return stored
