"""The audit HTTP API over an in-memory store: trail, filters, pagination, 404 and 422."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient

from services.audit.api import create_app
from services.audit.records import build_record, to_datetime
from services.audit.store import AuditStore
from services.common.messages import TransientError
from services.common.topics import Topics
from tests.unit.audit.builders import T0_MS, Instance, dead_letter, incoming, journey, quarantined
from tests.unit.audit.fake_store import InMemoryAuditStore

TOPICS = Topics("t-api.")
NOW = datetime(2026, 2, 1, tzinfo=UTC)
STUDY = Instance()
SECOND = Instance(sop=STUDY.sop[:-1] + "2")
OTHER_STUDY = Instance(study="1.2.3.4", series="1.2.3.4.1", sop="1.2.3.4.1.1")


def _store() -> InMemoryAuditStore:
    messages = [
        *journey(TOPICS, STUDY),
        *journey(TOPICS, SECOND, t0_ms=T0_MS + 1000),
        *journey(TOPICS, STUDY, partner="care-b", deidentified=False, t0_ms=T0_MS + 2000, delivered=False),
        quarantined(TOPICS, Instance(sop=STUDY.sop[:-1] + "3"), T0_MS + 3000),
        *journey(TOPICS, OTHER_STUDY, org="trust-z", partner="ai-c", t0_ms=T0_MS + 4000),
    ]
    store = InMemoryAuditStore()
    store.insert([build_record(incoming(m), TOPICS, NOW) for m in messages])
    letter = dead_letter(TOPICS, journey(TOPICS, SECOND)[1])
    store.insert([build_record(incoming(letter, timestamp_ms=T0_MS + 5000), TOPICS, NOW)])
    return store


KEY = "imx_audit_test-key"


def _keys(api_key: str) -> str | None:
    return "analyst-1" if api_key == KEY else None


@pytest.fixture
def client() -> TestClient:
    return TestClient(create_app(_store(), _keys), headers={"Authorization": f"Bearer {KEY}"})


def test_queries_need_an_analysts_key_and_health_does_not() -> None:
    anonymous = TestClient(create_app(_store(), _keys))
    for path in (f"/audit/studies/{STUDY.study}", "/audit/events", "/audit/summary"):
        refused = anonymous.get(path)
        assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
        assert anonymous.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert anonymous.get(path, headers={"Authorization": KEY}).status_code == 401, "the scheme is Bearer"
        assert anonymous.get(path, headers={"Authorization": f"bearer {KEY}"}).status_code == 200
    assert anonymous.get("/healthz").status_code == 200
    assert TestClient(create_app(_store(), None)).get("/audit/summary").status_code == 200, "explicitly open"


def test_trail_shows_every_hop_in_order(client: TestClient) -> None:
    response = client.get(f"/audit/studies/{STUDY.study}")
    assert response.status_code == 200
    trail = response.json()
    kinds = [e["event_type"] for e in trail["events"]]
    assert kinds[:5] == ["ingested", "routed", "prepared", "outcome", "receipt"]
    assert kinds.count("quarantined") == 1 and kinds.count("dead_letter") == 1
    times = [datetime.fromisoformat(e["occurred_at"]) for e in trail["events"]]
    assert times == sorted(times)
    assert trail["instances"] == 2
    assert trail["received"] == [
        {
            "source_org": "trust-a",
            "channel": "c-store",
            "instances": 2,
            "first_at": "2026-01-01T00:00:00Z",
            "last_at": "2026-01-01T00:00:01Z",
        }
    ]
    destinations = {d["partner_id"]: d for d in trail["destinations"]}
    assert destinations["research-a"] | {"last_delivered_at": None, "last_stored_at": None} == {
        "partner_id": "research-a",
        "route_id": "route-1",
        "profile": "research-basic",
        "profile_version": 3,
        "deidentified": True,
        "routed": 2,
        "prepared": 2,
        "delivered": 2,
        "failed": 0,
        "last_delivered_at": None,
        "stored": 2,
        "dead_lettered": 0,
        "last_stored_at": None,
        # Both were accepted at T0; the gateway stored them 40 ms and 1,040 ms later.
        "turnaround_ms_p50": 540,
        "turnaround_ms_max": 1040,
        "quarantined": 0,
        "completeness": None,
        "missing": None,
        "state": "stored",
        "reasons": [],
    }
    assert destinations["research-a"]["last_delivered_at"] == "2026-01-01T00:00:01.030000Z"
    assert destinations["research-a"]["last_stored_at"] == "2026-01-01T00:00:01.040000Z"
    assert (destinations["care-b"]["delivered"], destinations["care-b"]["failed"]) == (0, 1)
    assert (destinations["care-b"]["stored"], destinations["care-b"]["turnaround_ms_max"]) == (0, None)
    assert destinations["care-b"]["profile"] is None
    assert trail["quarantined"] == [{"stage": "routing", "reason": "no-route", "count": 1}]
    assert trail["dead_letters"] == [{"stage": "deid", "reason": "PermanentError", "count": 1}]
    assert "OTHER" not in str(trail) and OTHER_STUDY.sop not in str(trail)


def test_trail_includes_the_deidentified_copy_delivered_to_the_partner(client: TestClient) -> None:
    events = client.get(f"/audit/studies/{STUDY.study}").json()["events"]
    deliveries = [e for e in events if e["event_type"] == "receipt" and e["partner_id"] == "research-a"]
    assert {e["delivered_sop_uid"] for e in deliveries} == {STUDY.remapped().sop, SECOND.remapped().sop}


def test_trail_by_the_deidentified_study_uid_shows_only_that_copy(client: TestClient) -> None:
    events = client.get(f"/audit/studies/{STUDY.remapped().study}").json()["events"]
    assert {e["partner_id"] for e in events} == {"research-a"}
    assert {e["event_type"] for e in events} == {"prepared", "outcome", "receipt"}


def test_unknown_study_is_404_and_a_malformed_uid_is_422(client: TestClient) -> None:
    assert client.get("/audit/studies/1.2.3.999").status_code == 404
    assert client.get("/audit/studies/DOE^JANE").status_code == 422
    assert client.get("/audit/studies/" + "1." * 40 + "1").status_code == 422


def test_events_filters_combine(client: TestClient) -> None:
    def ids(**params: str) -> list[str]:
        body = client.get("/audit/events", params=params).json()
        return [e["event_type"] + "@" + (e["partner_id"] or "-") for e in body["events"]]

    assert ids(org="trust-z") == ["ingested@-", "routed@ai-c", "prepared@ai-c", "outcome@ai-c"]
    assert ids(partner="care-b", event_type="outcome") == ["outcome@care-b"]
    assert len(ids(event_type="receipt")) == 4
    since = to_datetime(T0_MS + 3000).isoformat()
    until = to_datetime(T0_MS + 4000).isoformat()
    assert ids(since=since, until=until) == ["quarantined@-"], "since inclusive, until exclusive"
    assert ids(event_type="quarantined", since="2026-01-01T00:00:03Z") == ["quarantined@-"]
    assert ids(event_type="quarantined", since="2026-01-01T01:00:03+01:00") == ["quarantined@-"]
    assert ids(event_type="quarantined", since="2026-01-01T00:00:03.001") == [], "no zone: UTC"


def test_pagination_walks_every_event_once_in_order(client: TestClient) -> None:
    seen: list[tuple[datetime, str]] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, str | int] = {"limit": 4}
        if cursor:
            params["cursor"] = cursor
        body = client.get("/audit/events", params=params).json()
        seen.extend((datetime.fromisoformat(e["occurred_at"]), e["id"]) for e in body["events"])
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    total = len(client.get("/audit/events", params={"limit": 1000}).json()["events"])
    assert total == 5 * 4 - 1 + 1 + 1, "the study is ingested once however many destinations it has"
    assert len(seen) == total and len(set(seen)) == total and seen == sorted(seen)
    assert pages == 6
    assert "next_cursor" in client.get("/audit/events").json()


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "1001"}, "limit"),
        ({"since": "yesterday"}, "since"),
        ({"until": "2026-13-01T00:00:00Z"}, "until"),
        ({"since": "2026-01-02T00:00:00Z", "until": "2026-01-01T00:00:00Z"}, "until"),
        ({"event_type": "exploded"}, "event_type"),
        ({"cursor": "not-a-cursor!"}, "cursor"),
        ({"cursor": "MTIzfA"}, "cursor"),  # "123|": no id
        # Numbers past the year 9999 (base64 of "253402300800000|x", "99999999999999999999|x"): were a 500.
        ({"cursor": "MjUzNDAyMzAwODAwMDAwfHg"}, "cursor"),
        ({"cursor": "OTk5OTk5OTk5OTk5OTk5OTk5OTl8eA"}, "cursor"),
        ({"until": "0001-01-01T00:00:00Z"}, "until"),  # nothing is earlier; was a 500 on the aggregates
    ],
)
def test_bad_query_parameters_are_422_naming_the_parameter(
    client: TestClient, params: dict[str, str], param: str
) -> None:
    response = client.get("/audit/events", params=params)
    assert response.status_code == 422
    assert [e["loc"] for e in response.json()["detail"]] == [["query", param]]


def test_summary_counts_deliveries_per_partner_and_quarantines_per_reason(client: TestClient) -> None:
    body = client.get("/audit/summary").json()
    assert body["delivered_by_partner"] == {"research-a": 2, "ai-c": 1}
    assert body["failed_by_partner"] == {"care-b": 1}
    assert body["quarantined_by_reason"] == {"no-route": 1}
    assert body["dead_letters_by_stage"] == {"deid": 1}
    assert body["events_by_type"]["ingested"] == 3
    later = client.get("/audit/summary", params={"since": "2026-01-01T00:00:02.500Z"}).json()
    assert later["delivered_by_partner"] == {"ai-c": 1} and later["failed_by_partner"] == {}
    assert client.get("/audit/summary", params={"since": "nope"}).status_code == 422
    for path, more in (("/audit/summary", {}), ("/audit/quarantines", {}), ("/audit/turnaround", {}),
                       ("/audit/volumes", {"by": "org"})):  # fmt: skip
        for until in ("0001-01-01T00:00:00Z", "0001-01-01T00:00:00.0005Z"):  # the second overflowed, a 500
            first = client.get(path, params={"until": until, **more})
            assert first.status_code == 422 and "at least 0001-01-01T00:00:00.001Z" in first.text, (path, until)
        # More days than an aggregate covers: a 422, not the last 400 days' counts without a word.
        years = client.get(path, params={"since": "2023-01-01T00:00:00Z", "until": "2026-06-01T00:00:00Z", **more})
        assert years.status_code == 422 and "at most 400 days" in years.text, path
        within = {"since": "2025-06-01T00:00:00Z", "until": "2026-07-06T00:00:00Z", **more}  # 400 days
        assert client.get(path, params=within).is_success, path


def test_healthz_reports_the_store() -> None:
    store = InMemoryAuditStore()
    client = TestClient(create_app(store, _keys))
    assert client.get("/healthz").json() == {"status": "ok", "store": True}
    store.reachable = False
    response = client.get("/healthz")
    assert response.status_code == 503 and response.json()["store"] is False
    assert client.head("/healthz").status_code == 503  # HEAD probes see the same


def test_healthz_answers_head_without_a_body_or_a_key() -> None:
    response = TestClient(create_app(InMemoryAuditStore(), _keys)).head("/healthz")
    assert response.status_code == 200 and response.content == b""


def test_a_store_outage_is_503_not_500() -> None:
    class DownStore(InMemoryAuditStore):
        def study_trail(self, study_uid: str) -> list:
            raise TransientError("audit store unavailable: AutoReconnect")

    store: AuditStore = DownStore()
    client = TestClient(create_app(store, _keys), headers={"Authorization": f"Bearer {KEY}"})
    answer = client.get("/audit/studies/1.2.3")
    assert answer.status_code == 503 and answer.headers["Retry-After"] == "5"


def test_openapi_documents_the_routes_and_their_models(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert {"/audit/studies/{study_uid}", "/audit/events", "/audit/summary", "/healthz"} <= set(spec["paths"])
    assert {"StudyTrail", "AuditEvent", "EventPageOut", "Summary"} <= set(spec["components"]["schemas"])
    assert "routing_attributes" not in str(spec)


DAY = "2026-01-01"


def test_volumes_per_org_partner_and_modality_count_instances_studies_and_bytes(client: TestClient) -> None:
    orgs = client.get("/audit/volumes", params={"by": "org"}).json()
    assert orgs["by"] == "org"
    assert [(d["day"], d["key"], d["instances"], d["studies"], d["bytes"]) for d in orgs["days"]] == [
        (DAY, "trust-a", 2, 1, 20),
        (DAY, "trust-z", 1, 1, 10),
    ], "STUDY's second journey repeats its ingested event: counted once"
    one = client.get("/audit/volumes", params={"by": "org", "key": "trust-z", "since": "2026-01-01T00:00:00Z"})
    assert [d["key"] for d in one.json()["days"]] == ["trust-z"]
    partners = {d["key"]: d for d in client.get("/audit/volumes", params={"by": "partner"}).json()["days"]}
    assert {p: (d["instances"], d["delivered"], d["failed"]) for p, d in partners.items()} == {
        "research-a": (2, 2, 0),
        "care-b": (1, 0, 1),
        "ai-c": (1, 1, 0),
    }
    modalities = client.get("/audit/volumes", params={"by": "modality"}).json()["days"]
    assert [(d["key"], d["instances"], d["studies"]) for d in modalities] == [("CT", 3, 2)]
    assert client.get("/audit/volumes", params={"by": "route"}).status_code == 422


def test_turnaround_gives_percentiles_per_partner_and_day(client: TestClient) -> None:
    body = client.get("/audit/turnaround", params={"partner": "research-a"}).json()
    [partner] = body["partners"]
    assert partner["partner_id"] == "research-a" and partner["overall"]["count"] == 2
    # Stored 40 ms and 1,040 ms after ingest; a log-spaced bin is within ~6% of the value.
    assert partner["overall"]["p50"] == pytest.approx(40, rel=0.07)
    assert partner["overall"]["p99"] == pytest.approx(1040, rel=0.07)
    assert [d["day"] for d in partner["days"]] == [DAY]
    everyone = client.get("/audit/turnaround").json()["partners"]
    assert [p["partner_id"] for p in everyone] == ["ai-c", "research-a"], "care-b's receipt failed: no time"


def test_quarantines_and_dead_letters_by_day_stage_and_reason(client: TestClient) -> None:
    days = client.get("/audit/quarantines").json()["days"]
    assert [(d["day"], d["kind"], d["stage"], d["reason"], d["count"]) for d in days] == [
        (DAY, "quarantined", "routing", "no-route", 1),
        (DAY, "dead_letter", "deid", "PermanentError", 1),
    ]


def test_the_aggregate_routes_are_documented_and_need_a_key(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/audit/volumes", "/audit/turnaround", "/audit/quarantines"} <= set(paths)
    anonymous = TestClient(create_app(_store(), _keys))
    for path in ("/audit/volumes?by=org", "/audit/turnaround", "/audit/quarantines"):
        assert anonymous.get(path).status_code == 401


def test_a_request_that_fails_is_in_the_access_log_and_a_key_check_outage_is_503() -> None:
    """A 500 left no access record (who asked what, and that it failed); an analyst key that could not
    be looked up while MongoDB was away was a 500 with pymongo's traceback."""
    from pymongo.errors import ServerSelectionTimeoutError

    from services.audit.access_log import MemoryAccessLog
    from services.audit.analysts import CachedKeyCheck

    class Broken(InMemoryAuditStore):
        def summary(self, *args: object, **kwargs: object) -> dict:  # type: ignore[override]
            raise RuntimeError("a bug")

    log = MemoryAccessLog()
    client = TestClient(
        create_app(Broken(), _keys, log), headers={"Authorization": f"Bearer {KEY}"}, raise_server_exceptions=False
    )
    assert client.get("/audit/summary").status_code == 500
    assert [(e.path, e.status) for e in log.entries] == [("/audit/summary", 500)]

    class AwayAnalysts:
        def key_holder(self, digest: str) -> None:
            raise ServerSelectionTimeoutError("no servers")

    log = MemoryAccessLog()
    check = CachedKeyCheck(AwayAnalysts()).holder  # type: ignore[arg-type]
    client = TestClient(create_app(_store(), check, log), headers={"Authorization": "Bearer imx_audit_x"})
    answer = client.get("/audit/summary")
    assert answer.status_code == 503 and "no servers" not in answer.text
    assert [(e.path, e.status) for e in log.entries] == [("/audit/summary", 503)]
