"""The demo's and tests' C-STORE sender (tools/demo/senders.py) gets every answer even when
pynetdicom's reactor polls the DIMSE queue while the answer arrives: the race that twice cost
tests/e2e/test_replicas.py a 30 s DIMSE timeout in CI (services/common/dicom/sender_responses.py).
The reactor's pause is defeated on every send here, as in test_dimse_reactor_race.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from services.common.dicom.sender_responses import keep_responses_for_sender
from tests.integration.gateway.conftest import Instance
from tests.integration.gateway.peers import storescp
from tests.integration.gateway.test_dimse_reactor_race import StalePause
from tools.demo import senders


@pytest.mark.timeout(120)
def test_every_answer_reaches_the_sender_while_the_reactor_keeps_polling(
    ct_study: list[Instance], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = []
    for instance in ct_study * 3:
        path = tmp_path / f"{len(files):04d}.dcm"
        path.write_bytes(instance.data)
        files.append(path)

    def keep_and_defeat_the_pause(assoc: Any) -> None:
        keep_responses_for_sender(assoc)
        assoc._reactor_checkpoint = StalePause(assoc)

    monkeypatch.setattr(senders, "keep_responses_for_sender", keep_and_defeat_the_pause)
    refusals: list[int | None] = []
    with storescp(tmp_path / "pacs") as pacs:
        accepted = senders.c_store(files, "SENDER", "127.0.0.1", pacs.port, "STORESCP", on_refusal=refusals.append)
        received = len(pacs.files())
    assert refusals == [], "every C-STORE answered; none waited out the DIMSE timeout"
    assert accepted == len(files) == received
