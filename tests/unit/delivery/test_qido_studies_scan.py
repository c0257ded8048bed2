"""QIDO's `/studies` with a key other than StudyInstanceUID read the manifest of every study the partner was
ever sent (20,000 studies: 40,001 database commands), in a worker thread every partner's fetches share.
Now the study list is narrowed by the studies' modalities and SOP classes first, and a query that finds too
many studies not matching is refused as too broad (413, PS3.18 8.3.4)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from services.common.blob_store import LocalBlobStore
from services.delivery import dicomweb
from services.delivery.delivered import DeliveredInstance
from services.delivery.dicomweb import create_partner_app

KEY = "partner-key"
CT = "1.2.840.10008.5.1.4.1.1.2"


class ManyStudies:
    """`count` CT studies of one instance each; counts the manifests read."""

    def __init__(self, count: int) -> None:
        self.uids = [f"1.2.3.{n}" for n in range(count)]
        self.read = 0
        self.narrowed: list[Mapping[str, frozenset[str]]] = []

    def _item(self, study: str) -> DeliveredInstance:
        return DeliveredInstance(
            "lab", study, study + ".1", study + ".1.1", CT, "1.2.840.10008.1.2.1", "0" * 64, 10, "d", modality="CT"
        )

    def instance(self, partner_id: str, study_uid: str, series_uid: str, sop_uid: str) -> DeliveredInstance | None:
        return None

    def study(self, partner_id: str, study_uid: str) -> list[DeliveredInstance]:
        self.read += 1
        return [self._item(study_uid)] if study_uid in self.uids else []

    def series(self, partner_id: str, study_uid: str, series_uid: str) -> list[DeliveredInstance]:
        return []

    def studies(self, partner_id: str, narrowed: Mapping[str, frozenset[str]] = {}) -> Iterator[dict[str, object]]:
        self.narrowed.append(narrowed)
        return iter({"study_uid": uid, "last_delivered_at_ms": 0} for uid in self.uids)


def _client(reader: ManyStudies, tmp_path: Path) -> TestClient:
    known = {KEY: "lab"}
    app = create_partner_app(reader, known.get, LocalBlobStore(tmp_path).extent, lambda _event: None)
    return TestClient(app, headers={"Authorization": f"Bearer {KEY}"})


def test_a_query_that_finds_too_many_studies_not_matching_is_refused_as_too_broad(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dicomweb, "MAX_STUDIES_PASSED", 20)
    reader = ManyStudies(500)
    answer = _client(reader, tmp_path).get("/dicomweb/studies?SeriesInstanceUID=9.9.9&limit=1")
    assert answer.status_code == 413 and "too broad" in answer.text
    assert reader.read == 21, "it stopped reading manifests once too many did not match"
    reader.read = 0
    answer = _client(reader, tmp_path).get("/dicomweb/studies?Modality=CT&offset=1000000")
    assert answer.status_code == 413 and reader.read == 21, "nor read every matching study to skip them"


def test_matching_studies_are_found_and_the_list_is_narrowed_before_manifests_are_read(tmp_path: Path) -> None:
    reader = ManyStudies(500)
    answer = _client(reader, tmp_path).get("/dicomweb/studies?Modality=CT&limit=2&offset=3")
    assert answer.status_code == 200
    assert [s["0020000D"]["Value"][0] for s in answer.json()] == sorted(reader.uids)[3:5]
    assert reader.narrowed == [{"modality": frozenset({"CT"})}] and reader.read == 5


def test_a_key_given_twice_matches_either_value(tmp_path: Path) -> None:
    """Only the last value of a repeated key was kept: the first study was silently left out."""
    answer = _client(ManyStudies(5), tmp_path).get(
        "/dicomweb/studies?StudyInstanceUID=1.2.3.1&StudyInstanceUID=1.2.3.4"
    )
    assert answer.status_code == 200
    assert [s["0020000D"]["Value"][0] for s in answer.json()] == ["1.2.3.1", "1.2.3.4"]
    answer = _client(ManyStudies(5), tmp_path).get("/dicomweb/studies?Modality=MR&Modality=*&limit=2")
    assert [s["0020000D"]["Value"][0] for s in answer.json()] == ["1.2.3.0", "1.2.3.1"], "* matches any"
