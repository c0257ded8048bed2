"""The partners' DICOMweb API against real FerretDB, real Kafka and a blob directory, with
dicomweb-client as the partner: what comes back is byte for byte what was delivered, a partner sees
only its own objects, every request is audited on imx.access.v1, and large objects stream."""

from __future__ import annotations

import hashlib
import os
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import FileDataset
from pymongo import MongoClient, monitoring
from pymongo.database import Database

from services.common.blob_store import LocalBlobStore
from services.common.bus import BusProducer, ensure_topics
from services.common.dicom.part10 import dataset_to_bytes, read_dataset
from services.common.dicom.synthetic import generate_study
from services.common.stores.partners import Partner, PartnerStore
from services.common.topics import Topics
from services.delivery import dicomweb
from services.delivery.delivered import INSTANCES, DeliveredInstance, DeliveredObjects
from services.delivery.dicomweb_wiring import start_partner_api
from services.delivery.retrieval_refs import QUERY_PARAM, RetrievalRefs, SignedObject
from services.delivery.settings import DeliverySettings
from services.proto_gen.imx.v1.events_pb2 import PartnerRetrieval
from tests.integration.bus_helpers import read_all

MiB = 1024 * 1024


@dataclass
class Stored:
    item: DeliveredInstance
    data: bytes

    @property
    def sha256(self) -> str:
        return self.item.sha256


@dataclass
class Api:
    base: str
    topics: Topics
    bootstrap: str
    keys: dict[str, str]
    blobs: LocalBlobStore
    delivered: DeliveredObjects
    study: list[Stored]  # partner "hosp-a"'s CT study, in series then SOP order
    other: list[Stored]  # partner "research-b"'s study

    def client(self, partner: str) -> DICOMwebClient:
        return DICOMwebClient(url=self.base, headers={"Authorization": f"Bearer {self.keys[partner]}"})

    def get(self, path: str, partner: str | None = "hosp-a", **headers: str) -> requests.Response:
        if partner:
            headers["Authorization"] = f"Bearer {self.keys[partner]}"
        return requests.get(self.base + path, headers=headers, timeout=30)

    def events(self, expected: int, timeout_s: float = 20) -> list[PartnerRetrieval]:
        records = read_all(self.bootstrap, self.topics.access, expected, timeout_s=timeout_s)
        events = []
        for record in records:
            event = PartnerRetrieval()
            event.ParseFromString(record.value)
            assert record.key == (event.study_instance_uid.encode() or None)
            events.append(event)
        return events


def _record(
    delivered: DeliveredObjects, blobs: LocalBlobStore, partner: str, datasets: Iterator[FileDataset]
) -> list[Stored]:
    stored = []
    for ds in datasets:
        data = dataset_to_bytes(ds)
        item = DeliveredInstance(
            partner_id=partner,
            study_uid=str(ds.StudyInstanceUID),
            series_uid=str(ds.SeriesInstanceUID),
            sop_uid=str(ds.SOPInstanceUID),
            sop_class_uid=str(ds.SOPClassUID),
            transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
            sha256=blobs.put(data),
            size=len(data),
            delivery_id=hashlib.sha256(data).hexdigest()[:32],
            modality=str(ds.Modality),
            delivered_at_ms=int(time.time() * 1000),
        )
        stored.append(Stored(item, data))
    delivered.record(s.item for s in stored)
    return sorted(stored, key=lambda s: (s.item.series_uid, s.item.sop_uid))


@pytest.fixture
def api(db: Database, kafka_bootstrap: str, make_name, tmp_path: Path) -> Iterator[Api]:  # type: ignore[no-untyped-def]
    topics = Topics(prefix=make_name("dicomweb") + ".")
    ensure_topics(kafka_bootstrap, [topics.access], partitions=2)
    blobs = LocalBlobStore(tmp_path / "blobs")
    delivered = DeliveredObjects(db)
    partners = PartnerStore(db)
    keys = {}
    for partner in ("hosp-a", "research-b"):
        partners.add(Partner(partner))
        keys[partner] = partners.issue_dicomweb_key(partner)
    study = _record(delivered, blobs, "hosp-a", generate_study(11, "CT", 5, "src-a"))
    other = _record(delivered, blobs, "research-b", generate_study(12, "MR", 2, "src-b"))
    settings = DeliverySettings(http_host="127.0.0.1", http_port=0, kafka_bootstrap=kafka_bootstrap)
    producer = BusProducer(kafka_bootstrap, client_id="t-dicomweb")
    server = start_partner_api(settings, db, blobs, producer, topics)
    try:
        yield Api(
            f"http://127.0.0.1:{server.port}/dicomweb", topics, kafka_bootstrap, keys, blobs, delivered, study, other
        )
    finally:
        server.stop()
        producer.close()


def _raw_parts(client: DICOMwebClient, url: str) -> list[bytes]:
    """The parts of a multipart answer as bytes, split by dicomweb-client's own decoder."""
    response = client._http_get(url, headers={"Accept": 'multipart/related; type="application/dicom"'}, stream=True)
    return [bytes(part) for part in client._decode_multipart_message(response, stream=True)]


def test_instance_series_and_study_come_back_byte_for_byte(api: Api) -> None:
    client = api.client("hosp-a")
    first = api.study[0].item
    dataset = client.retrieve_instance(first.study_uid, first.series_uid, first.sop_uid)
    assert dataset.SOPInstanceUID == first.sop_uid
    assert dataset.PixelData == read_dataset(api.study[0].data).PixelData

    single = api.get(f"/studies/{first.study_uid}/series/{first.series_uid}/instances/{first.sop_uid}")
    assert single.status_code == 200
    assert single.headers["content-type"] == f"application/dicom; transfer-syntax={first.transfer_syntax_uid}"
    assert hashlib.sha256(single.content).hexdigest() == first.sha256

    series_uid = first.series_uid
    in_series = [s for s in api.study if s.item.series_uid == series_uid]
    datasets = client.retrieve_series(first.study_uid, series_uid)
    assert sorted(str(d.SOPInstanceUID) for d in datasets) == [s.item.sop_uid for s in in_series]
    parts = _raw_parts(client, f"{api.base}/studies/{first.study_uid}/series/{series_uid}")
    assert parts == [s.data for s in in_series]

    study_parts = _raw_parts(client, f"{api.base}/studies/{first.study_uid}")
    assert [hashlib.sha256(p).hexdigest() for p in study_parts] == [s.sha256 for s in api.study]
    assert len(client.retrieve_study(first.study_uid)) == len(api.study) == 5


def test_metadata_at_three_levels_is_the_header_without_bulk_data(api: Api) -> None:
    client = api.client("hosp-a")
    first = api.study[0].item
    study = client.retrieve_study_metadata(first.study_uid)
    assert sorted(m["00080018"]["Value"][0] for m in study) == sorted(s.item.sop_uid for s in api.study)
    assert all("7FE00010" not in m for m in study)
    series = client.retrieve_series_metadata(first.study_uid, first.series_uid)
    assert {m["0020000E"]["Value"][0] for m in series} == {first.series_uid}
    instance = client.retrieve_instance_metadata(first.study_uid, first.series_uid, first.sop_uid)
    assert instance["00080018"]["Value"] == [first.sop_uid]
    assert instance["00080060"]["Value"] == ["CT"]


def test_qido_shows_only_what_the_partner_was_sent(api: Api) -> None:
    a, b = api.client("hosp-a"), api.client("research-b")
    first = api.study[0].item
    (study,) = a.search_for_studies()
    assert study["0020000D"]["Value"] == [first.study_uid]
    assert study["00201208"]["Value"] == [5]
    assert study["00080061"]["Value"] == ["CT"]
    assert [s["0020000D"]["Value"] for s in b.search_for_studies()] == [[api.other[0].item.study_uid]]
    assert b.search_for_series(first.study_uid) == []
    assert b.search_for_instances(first.study_uid) == []

    series = a.search_for_series(first.study_uid)
    assert sorted(s["0020000E"]["Value"][0] for s in series) == sorted({s.item.series_uid for s in api.study})
    in_series = a.search_for_instances(first.study_uid, first.series_uid)
    assert {i["0020000E"]["Value"][0] for i in in_series} == {first.series_uid}
    everything = a.search_for_instances(first.study_uid)
    assert [i["00080018"]["Value"][0] for i in everything] == [s.item.sop_uid for s in api.study]
    assert everything[0]["00081190"]["Value"][0].startswith(api.base + "/studies/")
    page = a.search_for_instances(first.study_uid, limit=2, offset=1)
    assert [i["00080018"]["Value"][0] for i in page] == [s.item.sop_uid for s in api.study[1:3]]
    by_sop = a.search_for_instances(first.study_uid, search_filters={"SOPInstanceUID": first.sop_uid})
    assert [i["00080018"]["Value"][0] for i in by_sop] == [first.sop_uid]
    two = ",".join(s.item.sop_uid for s in api.study[:2])  # PS3.18's UID list matching
    listed = a.search_for_instances(first.study_uid, search_filters={"SOPInstanceUID": two})
    assert sorted(i["00080018"]["Value"][0] for i in listed) == sorted(s.item.sop_uid for s in api.study[:2])
    (by_list,) = a.search_for_studies(search_filters={"StudyInstanceUID": f"9.9.9,{first.study_uid},not-a-uid"})
    assert by_list["0020000D"]["Value"] == [first.study_uid] and by_list["00201208"]["Value"] == [5]
    assert b.search_for_studies(search_filters={"StudyInstanceUID": first.study_uid}) == [], "another's study"
    assert a.search_for_studies(search_filters={"StudyInstanceUID": first.study_uid, "Modality": "MR"}) == []
    assert a.search_for_studies(search_filters={"Modality": "MR"}) == []
    assert api.get("/studies?PatientName=SMITH").status_code == 400


def test_another_partners_object_is_the_same_404_as_an_unknown_one(api: Api) -> None:
    first = api.study[0].item
    path = f"/studies/{first.study_uid}/series/{first.series_uid}/instances/{first.sop_uid}"
    unknown = f"/studies/{first.study_uid}/series/{first.series_uid}/instances/1.2.3.4"
    for suffix in ("", "/metadata"):
        theirs, missing = api.get(path + suffix, "research-b"), api.get(unknown + suffix, "research-b")
        assert (theirs.status_code, theirs.content) == (missing.status_code, missing.content)
        assert theirs.status_code == 404
    for route in (f"/studies/{first.study_uid}", f"/studies/{first.study_uid}/series/{first.series_uid}"):
        theirs, missing = api.get(route, "research-b"), api.get(route.replace(first.study_uid, "1.2.3"), "research-b")
        assert (theirs.status_code, theirs.content) == (404, missing.content)
    with pytest.raises(requests.HTTPError) as refused:
        api.client("research-b").retrieve_instance(first.study_uid, first.series_uid, first.sop_uid)
    assert refused.value.response.status_code == 404


def test_a_request_without_a_valid_key_is_401_with_a_challenge(api: Api) -> None:
    for headers in ({}, {"Authorization": "Bearer imxp_not-a-key"}, {"Authorization": f"Basic {api.keys['hosp-a']}"}):
        response = requests.get(api.base + "/studies", headers=headers, timeout=10)
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"].startswith('Bearer realm="imx-dicomweb"')


def test_refusals_bad_uids_conversions_and_missing_blobs(api: Api) -> None:
    first = api.study[0].item
    instance = f"/studies/{first.study_uid}/series/{first.series_uid}/instances/{first.sop_uid}"
    assert api.get("/studies/1.2.abc").status_code == 400
    assert api.get(f"/studies/{'1' * 65}/metadata").status_code == 400
    jpeg = "1.2.840.10008.1.2.4.50"
    assert api.get(instance, Accept=f"application/dicom; transfer-syntax={jpeg}").status_code == 406
    assert api.get(instance, Accept=f"application/dicom; transfer-syntax={first.transfer_syntax_uid}").ok
    assert api.get(instance, Accept="application/dicom; transfer-syntax=*").ok
    assert api.get(f"/studies/{first.study_uid}", Accept="application/dicom").status_code == 406
    assert api.get(instance + "/metadata", Accept="text/html").status_code == 406

    api.blobs.path_for(first.sha256).unlink()
    for path in (instance, instance + "/metadata"):
        gone = api.get(path)
        assert gone.status_code == 410
        assert first.sop_uid not in gone.text
    # The rest of its study is still sent: 206, saying how many are not (it was a 410 for the whole study).
    study = api.get(f"/studies/{first.study_uid}", Accept='multipart/related; type="application/dicom"')
    assert study.status_code == 206
    assert study.headers["Warning"] == f'299 imx "1 of {len(api.study)} instances are no longer available"'
    rest = _raw_parts(api.client("hosp-a"), f"{api.base}/studies/{first.study_uid}")
    assert len(rest) == len(api.study) - 1 and first.sop_uid.encode() not in b"".join(rest)
    metadata = api.get(f"/studies/{first.study_uid}/metadata").json()
    assert len(metadata) == len(api.study), "a gone one's metadata is the identifiers on record"


def test_a_broken_transfer_resumes_from_where_it_broke_and_a_current_copy_is_not_sent_again(api: Api) -> None:
    first = api.study[0]
    item = first.item
    instance = f"/studies/{item.study_uid}/series/{item.series_uid}/instances/{item.sop_uid}"
    whole = api.get(instance)
    etag = whole.headers["ETag"]
    assert whole.status_code == 200 and etag == f'"{item.sha256}"' and whole.headers["Accept-Ranges"] == "bytes"

    # The first 1,000 bytes arrived before the connection broke: the rest, only if it is still this object.
    rest = api.get(instance, Range="bytes=1000-", **{"If-Range": etag})
    assert rest.status_code == 206
    assert rest.headers["Content-Range"] == f"bytes 1000-{item.size - 1}/{item.size}"
    assert int(rest.headers["Content-Length"]) == item.size - 1000
    assert whole.content[:1000] + rest.content == first.data
    assert api.get(instance, Range="bytes=10-19").content == first.data[10:20]
    assert api.get(instance, Range="bytes=-16").content == first.data[-16:]
    # Another object's tag: the whole of this one, never a piece to be spliced onto the other's.
    other = api.get(instance, Range="bytes=1000-", **{"If-Range": '"' + "0" * 64 + '"'})
    assert other.status_code == 200 and other.content == first.data
    past = api.get(instance, Range=f"bytes={item.size}-")
    assert past.status_code == 416 and past.headers["Content-Range"] == f"bytes */{item.size}"
    several = api.get(instance, Range="bytes=0-9,20-29")  # answered whole (RFC 9110 lets a server)
    assert several.status_code == 200 and several.content == first.data

    current = api.get(instance, **{"If-None-Match": etag})
    assert current.status_code == 304 and current.content == b"" and current.headers["ETag"] == etag
    assert api.get(instance, **{"If-None-Match": '"' + "0" * 64 + '"'}).content == first.data

    key = {"Authorization": f"Bearer {api.keys['hosp-a']}"}
    head = requests.head(api.base + instance, headers=key, timeout=30)
    assert head.status_code == 200 and head.content == b""
    assert int(head.headers["Content-Length"]) == item.size and head.headers["ETag"] == etag
    ranged_head = requests.head(api.base + instance, headers={**key, "Range": "bytes=0-9"}, timeout=30)
    assert ranged_head.status_code == 200, "Range is for GET alone (RFC 9110 §14.2)"
    assert api.get(instance, Range=f"bytes=0-{'9' * 5000}").status_code == 200, "no 500 for a huge number"

    # The audit trail's exports are what left: a HEAD, a 304 or a 416 sent no instance.
    events = [e for e in api.events(12) if e.action == "instance"]
    sent = sorted((e.http_status, e.instances, e.bytes) for e in events)
    assert (304, 0, 0) in sent and (416, 0, 0) in sent and sent.count((200, 0, 0)) == 2, sent
    assert (206, 1, item.size - 1000) in sent and (206, 1, 10) in sent


def test_every_request_after_sign_in_is_one_retrieval_event(api: Api) -> None:
    first = api.study[0].item
    instance = f"/studies/{first.study_uid}/series/{first.series_uid}/instances/{first.sop_uid}"
    series = [s for s in api.study if s.item.series_uid == first.series_uid]
    assert api.get(instance).status_code == 200
    assert api.get(f"/studies/{first.study_uid}/series/{first.series_uid}").status_code == 200
    assert api.get(f"/studies/{first.study_uid}/metadata").status_code == 200
    assert api.get("/studies").status_code == 200
    assert api.get(instance, "research-b").status_code == 404
    assert api.get(instance, None).status_code == 401  # not signed in: nobody to attribute it to

    api.events(5)
    time.sleep(1)  # a sixth event, had the 401 made one, would be there by now
    events = api.events(6, timeout_s=3)
    assert len(events) == 5
    by_action = {(e.partner_id, e.action): e for e in events}
    assert len(by_action) == 5
    one = by_action["hosp-a", "instance"]
    assert (one.http_status, one.study_instance_uid, one.sop_instance_uid, one.instances, one.bytes) == (
        200,
        first.study_uid,
        first.sop_uid,
        1,
        first.size,
    )
    whole_series = by_action["hosp-a", "series"]
    assert (whole_series.http_status, whole_series.series_instance_uid, whole_series.instances) == (
        200,
        first.series_uid,
        len(series),
    )
    assert whole_series.bytes == sum(s.item.size for s in series)
    metadata = by_action["hosp-a", "metadata"]
    assert (metadata.study_instance_uid, metadata.instances, metadata.http_status) == (first.study_uid, 5, 200)
    assert metadata.bytes > 0
    query = by_action["hosp-a", "query"]
    assert (query.http_status, query.instances, query.study_instance_uid) == (200, 1, "")
    refused = by_action["research-b", "instance"]
    assert (refused.http_status, refused.sop_instance_uid, refused.instances, refused.bytes) == (
        404,
        first.sop_uid,
        0,
        0,
    )
    assert all(e.meta.event_id and e.meta.occurred_at_ms > 0 for e in events)
    assert len({e.meta.event_id for e in events}) == 5


class CountingProducer(BusProducer):
    """Counts how retrieval events are handed over: `publish` waits for the broker, `publish_soon` does not."""

    def __init__(self, bootstrap: str) -> None:
        super().__init__(bootstrap, client_id="t-dicomweb-count", linger_ms=200)
        self.waited = 0
        self.handed = 0

    def publish(self, messages, timeout_s: float = 60.0) -> None:  # type: ignore[no-untyped-def]
        self.waited += 1
        super().publish(messages, timeout_s)

    def publish_soon(self, messages, on_error) -> None:  # type: ignore[no-untyped-def]
        self.handed += 1
        super().publish_soon(messages, on_error)


def test_retrieval_events_are_not_waited_for_one_by_one(api: Api, db: Database, tmp_path: Path) -> None:
    """A gateway fetching ahead makes several retrievals at once: each is still one event, but none waits
    for its own broker acknowledgement (one flush, one produce request, per retrieval before)."""
    producer = CountingProducer(api.bootstrap)
    settings = DeliverySettings(http_host="127.0.0.1", http_port=0, kafka_bootstrap=api.bootstrap)
    server = start_partner_api(settings, db, api.blobs, producer, api.topics)
    try:
        base = f"http://127.0.0.1:{server.port}/dicomweb"
        headers = {"Authorization": f"Bearer {api.keys['hosp-a']}"}
        for stored in api.study:
            item = stored.item
            url = f"{base}/studies/{item.study_uid}/series/{item.series_uid}/instances/{item.sop_uid}"
            assert requests.get(url, headers=headers, timeout=30).status_code == 200
        events = api.events(len(api.study), timeout_s=10)
    finally:
        server.stop()
        producer.close()
    assert (producer.waited, producer.handed) == (0, len(api.study))
    assert sorted(e.sop_instance_uid for e in events if e.action == "instance") == sorted(
        s.item.sop_uid for s in api.study
    )


class CommandCounter(monitoring.CommandListener):
    def __init__(self) -> None:
        self.finds: list[str] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name == "find":
            self.finds.append(str(event.command.get("find")))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


def test_a_signed_reference_is_served_without_reading_the_index(
    api: Api, db: Database, mongo_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fetch of the URL delivery put on the partner's feed costs no database read (the key lookup is
    cached) and no worker thread (answered on the event loop); any other partner, path or token falls
    back to the index, with the same answers as before."""
    hops: list[str] = []
    in_thread = dicomweb.run_in_threadpool

    async def counted(func: Any, *args: Any, **kwargs: Any) -> Any:
        hops.append(func.__name__)
        return await in_thread(func, *args, **kwargs)

    monkeypatch.setattr(dicomweb, "run_in_threadpool", counted)
    counter = CommandCounter()
    client: MongoClient = MongoClient(mongo_uri, event_listeners=[counter])
    refs = RetrievalRefs(b"s" * 32)
    producer = BusProducer(api.bootstrap, client_id="t-dicomweb-signed")
    settings = DeliverySettings(http_host="127.0.0.1", http_port=0, kafka_bootstrap=api.bootstrap)
    server = start_partner_api(settings, client[db.name], api.blobs, producer, api.topics, refs)
    base = f"http://127.0.0.1:{server.port}/dicomweb"

    def get(url: str, partner: str) -> requests.Response:
        return requests.get(url, headers={"Authorization": f"Bearer {api.keys[partner]}"}, timeout=30)

    def signed_url(item: DeliveredInstance, partner: str = "hosp-a") -> str:
        ref = refs.token(
            partner,
            item.study_uid,
            item.series_uid,
            item.sop_uid,
            SignedObject(item.sha256, item.size, item.transfer_syntax_uid),
        )
        return f"{base}/studies/{item.study_uid}/series/{item.series_uid}/instances/{item.sop_uid}?{QUERY_PARAM}={ref}"

    try:
        get(signed_url(api.study[0].item), "hosp-a")  # the key lookup, then cached
        get(signed_url(api.other[0].item, "research-b"), "research-b")
        counter.finds.clear()
        hops.clear()
        for stored in api.study:
            response = get(signed_url(stored.item), "hosp-a")
            assert (response.status_code, response.content) == (200, stored.data)
        assert counter.finds.count(INSTANCES) == 0, "no index read for a signed reference"
        assert hops == [], "answered on the event loop"

        first = api.study[0].item
        unknown = f"{base}/studies/{first.study_uid}/series/{first.series_uid}/instances/1.2.3.4"
        theirs, missing = get(signed_url(first), "research-b"), get(unknown, "research-b")
        assert (theirs.status_code, theirs.content) == (missing.status_code, missing.content)
        assert theirs.status_code == 404
        assert counter.finds.count(INSTANCES) == 2, "another partner's reference is looked up, like any"

        counter.finds.clear()
        edited = signed_url(first).replace(f"_{first.size}_", f"_{first.size + 1}_")
        response = get(edited, "hosp-a")
        assert (response.status_code, response.content) == (200, api.study[0].data), "an edited token: the index"
        assert counter.finds.count(INSTANCES) == 1
        assert hops == ["handle"] * 3, "the index is read in a worker thread"

        api.blobs.path_for(first.sha256).unlink()
        assert get(signed_url(first), "hosp-a").status_code == 410, "a signed object whose blob is gone"
        events = api.events(len(api.study) + 6, timeout_s=20)
    finally:
        server.stop()
        producer.close()
        client.close()
    assert sum(e.partner_id == "hosp-a" and e.http_status == 200 for e in events) == len(api.study) + 2


def _peak_rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def _reset_peak_rss() -> bool:
    try:  # Linux >= 4.0: "5" resets the peak RSS to the current RSS
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _large_instance(api: Api, size: int) -> DeliveredInstance:
    """A synthetic multi-frame CT of `size` bytes written straight into the blob directory, its pixel
    data a sparse hole (instant to write, no memory), hashed as it is described."""
    ds = next(generate_study(21, "CT", 1, "src-large"))
    frame = int(ds.Rows) * int(ds.Columns) * 2
    del ds.PixelData
    header = dataset_to_bytes(ds)
    pixels = size - len(header) - 12
    pixels -= pixels % frame
    ds.NumberOfFrames = pixels // frame
    header = dataset_to_bytes(ds)
    element = struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, pixels)
    digest = hashlib.sha256(header + element)
    zeros = bytes(MiB)
    for _ in range(pixels // MiB):
        digest.update(zeros)
    digest.update(bytes(pixels % MiB))
    sha = digest.hexdigest()
    path = api.blobs.path_for(sha)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as handle:
        handle.write(header + element)
        handle.truncate(len(header) + len(element) + pixels)
    item = DeliveredInstance(
        partner_id="hosp-a",
        study_uid=str(ds.StudyInstanceUID),
        series_uid=str(ds.SeriesInstanceUID),
        sop_uid=str(ds.SOPInstanceUID),
        sop_class_uid=str(ds.SOPClassUID),
        transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
        sha256=sha,
        size=path.stat().st_size,
        delivery_id="large",
        modality="CT",
    )
    api.delivered.record([item])
    return item


def _download(url: str, key: str, accept: str) -> tuple[str, int, int]:
    """SHA-256 and size of what the URL streams, and the process's peak RSS growth meanwhile."""
    peak = [0]
    stop = threading.Event()
    base = int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def sample() -> None:  # in case the peak cannot be reset: the largest RSS seen, every 5 ms
        while not stop.is_set():
            rss = int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            peak[0] = max(peak[0], rss - base)
            time.sleep(0.005)

    reset = _reset_peak_rss()
    before = _peak_rss_bytes()
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    digest, size = hashlib.sha256(), 0
    with requests.get(url, headers={"Authorization": f"Bearer {key}", "Accept": accept}, stream=True, timeout=60) as r:
        assert r.status_code == 200
        for chunk in r.iter_content(MiB):
            digest.update(chunk)
            size += len(chunk)
    stop.set()
    sampler.join()
    growth = max(peak[0], _peak_rss_bytes() - before) if reset else peak[0]
    return digest.hexdigest(), size, growth


def test_a_200_mb_instance_streams_without_being_held_in_memory(api: Api) -> None:
    size = 200 * MiB
    item = _large_instance(api, size)
    url = f"{api.base}/studies/{item.study_uid}/series/{item.series_uid}/instances/{item.sop_uid}"
    started = time.monotonic()
    sha, received, growth = _download(url, api.keys["hosp-a"], "application/dicom")
    seconds = time.monotonic() - started
    assert (sha, received) == (item.sha256, item.size)
    print(f"\n200 MB instance: {received / MiB:.0f} MiB in {seconds:.2f} s, peak RSS growth {growth / MiB:.1f} MiB")
    assert growth < 40 * MiB

    series_url = f"{api.base}/studies/{item.study_uid}/series/{item.series_uid}"
    _sha, received, growth = _download(series_url, api.keys["hosp-a"], 'multipart/related; type="application/dicom"')
    assert received > item.size
    print(f"200 MB series (multipart): peak RSS growth {growth / MiB:.1f} MiB")
    assert growth < 40 * MiB

    metadata = api.client("hosp-a").retrieve_instance_metadata(item.study_uid, item.series_uid, item.sop_uid)
    assert int(metadata["00280008"]["Value"][0]) > 390  # NumberOfFrames, read from the header alone
    assert "7FE00010" not in metadata
