"""The analysts' queries and the control plane's changes are tamper-evident too (real Kafka, real FerretDB,
the whole audit service): an analyst added over gRPC (a control change) and that analyst's query (an access
entry) are appended to the Merkle log beside the pipeline's records; `imx audit verify` passes on them,
then names the query record deleted and the change record edited."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
from pymongo import MongoClient
from typer.testing import CliRunner

from services.audit.tamper_log import CHUNK, StoredTree
from services.cli.main import app
from services.common.topics import Topics
from tests.integration.audit.helpers import audit_settings, publish_journey, running_audit
from tests.unit.audit.builders import Instance
from tests.waiting import wait_for

STUDY = Instance()
PIPELINE_LEAVES = 5  # STUDY's journey


def _leaf_ids(tree: StoredTree) -> list[str]:
    tree.forget()
    return [str(e["id"]) for chunk in range(tree.size() // CHUNK + 1) for e in tree.chunk(chunk)]


def _signed_covers(tree: StoredTree, prefixes: tuple[str, ...]) -> bool:
    head = tree.tree_head()
    ids = _leaf_ids(tree)
    return head is not None and head.size == len(ids) and all(any(i.startswith(p) for i in ids) for p in prefixes)


def test_verify_names_a_deleted_query_record_and_an_edited_change_record(
    kafka_bootstrap: str, mongo_uri: str, unique_name: str, client: MongoClient[dict[str, Any]], tmp_path: Path
) -> None:
    topics = Topics(prefix=unique_name + ".")
    publish_journey(kafka_bootstrap, topics, STUDY)
    settings = audit_settings(
        kafka_bootstrap, mongo_uri, unique_name, topics, signing_key_file=tmp_path / "key.pem", sth_interval_s=0.5
    )
    db = client[unique_name]
    tree = StoredTree(db["audit_log"])
    runner = CliRunner()
    with running_audit(settings) as endpoints:
        env = {"IMX_AUDIT_GRPC": f"127.0.0.1:{endpoints.grpc_port}", "COLUMNS": "250"}
        wait_for(lambda: tree.size() >= PIPELINE_LEAVES, 30, "the journey's records in the log")
        added = runner.invoke(app, ["analysts", "add", "ana"], env=env)
        assert added.exit_code == 0, added.output
        key = re.search(r"\(shown once\) (\S+)", added.output)
        assert key is not None, added.output
        answer = httpx.get(
            f"http://127.0.0.1:{endpoints.http_port}/audit/studies/{STUDY.study}",
            headers={"Authorization": f"Bearer {key.group(1)}"},
        )
        assert answer.status_code == 200
        wait_for(lambda: _signed_covers(tree, ("access:", "change:")), 30, "a signed head over the query and change")

        verified = runner.invoke(app, ["audit", "verify"], env=env)
        assert verified.exit_code == 0, verified.output

        ids = _leaf_ids(tree)
        query_leaf = next(i for i in ids if i.startswith("access:"))
        change_leaf = next(i for i in ids if i.startswith("change:"))
        query = db["audit_events_access"].find_one({"_id": query_leaf.removeprefix("access:")})
        assert query is not None and query["status"] == 200 and query["analyst_id"] == "ana"
        change = db["control_changes"].find_one({"_id": change_leaf.removeprefix("change:")})
        assert change is not None and change["method"] == "/imx.v1.AnalystAdmin/AddAnalyst"

        db["audit_events_access"].delete_one({"_id": query["_id"]})
        db["control_changes"].update_one({"_id": change["_id"]}, {"$set": {"who": "someone-else"}})
        result = runner.invoke(app, ["audit", "verify"], env=env)
        assert result.exit_code == 1, result.output
        assert "TAMPERED" in result.output
        lines = result.output.splitlines()
        assert any("deleted" in line and query_leaf in line for line in lines), result.output
        assert any("changed" in line and change_leaf in line for line in lines), result.output
