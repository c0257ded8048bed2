"""Retention in the running audit service (real Kafka, real FerretDB): once its records are past the
retention age, a study's trail, its minute pages and its day's counters, marks and journals are gone,
and `imx audit verify` (the gRPC call) still passes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from pymongo import MongoClient
from typer.testing import CliRunner

from services.audit.tamper_log import StoredTree
from services.cli.main import app
from services.common.topics import Topics
from tests.integration.audit.helpers import audit_settings, publish_journey, running_audit
from tests.unit.audit.builders import Instance
from tests.waiting import wait_for

STUDY = Instance()
# The journey's events happened two days ago, at midnight: past, and recent enough that its receipt's
# times (the partner's claims) are kept as sent.
_T0 = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=2)
T0_MS = int(_T0.timestamp() * 1000)
DAY = _T0.date().isoformat()


def test_the_service_purges_a_studys_keyed_documents_and_verify_still_passes(
    kafka_bootstrap: str, mongo_uri: str, unique_name: str, client: MongoClient, tmp_path: Path
) -> None:
    topics = Topics(prefix=unique_name + ".")
    publish_journey(kafka_bootstrap, topics, STUDY, T0_MS)
    settings = audit_settings(
        kafka_bootstrap, mongo_uri, unique_name, topics, signing_key_file=tmp_path / "k.pem", sth_interval_s=0.5,
        retention_days=3 / 86_400, retention_every_s=1.0,
    )  # fmt: skip
    db = client[unique_name]
    tree = StoredTree(db["audit_log"])
    with running_audit(settings) as endpoints:
        wait_for(lambda: (head := tree.tree_head()) is not None and head.size == 5, 30, "a signed head of 5 leaves")
        assert db["audit_events_counts"].find_one({"_id": f"x:{DAY}"}) is not None

        def purged() -> bool:
            retained = db["audit_events_counts"].find_one({"_id": "retained"})
            return retained is not None and retained["from"] > DAY

        wait_for(purged, 60, "the day's keyed documents purged")
        assert db["audit_events"].count_documents({}) == 0
        assert db["audit_events_counts"].find_one({"_id": f"x:{DAY}"}) is None
        assert not list(db["audit_events_counts"].find({"_id": {"$regex": "^j:"}}))
        assert not list(db["audit_events_marks"].find({"_id": {"$regex": f"({DAY}|^jd:|^td:)"}}))
        assert not list(db["audit_events_pages"].find({"_id": {"$regex": "^m:"}}))
        study_pages = list(db["audit_events_pages"].find({"_id": {"$regex": "^s:"}}))
        assert study_pages  # kept, emptied: a chain has no gaps
        env = {"IMX_AUDIT_GRPC": f"127.0.0.1:{endpoints.grpc_port}"}
        result = CliRunner().invoke(app, ["audit", "verify"], env=env)
        assert result.exit_code == 0, result.output
        assert "verified" in result.output
