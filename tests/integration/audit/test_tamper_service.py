"""`imx audit verify` against the running audit service (real Kafka, real FerretDB): events consumed from
Kafka are appended to the log and signed; the command passes on the untouched log and, after a stored
record is edited, exits 1 naming the leaf and the record."""

from __future__ import annotations

import re
import stat
from datetime import timedelta
from pathlib import Path

from pymongo import MongoClient
from typer.testing import CliRunner

from services.audit.pages import pack, unpack
from services.audit.tamper_log import StoredTree
from services.cli.main import app
from services.common.topics import Topics
from tests.integration.audit.helpers import audit_settings, publish_journey, running_audit
from tests.unit.audit.builders import Instance
from tests.waiting import wait_for

STUDY = Instance()


def test_imx_audit_verify_passes_then_names_an_edited_record(
    kafka_bootstrap: str, mongo_uri: str, unique_name: str, client: MongoClient, tmp_path: Path
) -> None:
    topics = Topics(prefix=unique_name + ".")
    publish_journey(kafka_bootstrap, topics, STUDY)
    key_file = tmp_path / "keys" / "audit-signing.pem"
    settings = audit_settings(
        kafka_bootstrap, mongo_uri, unique_name, topics, signing_key_file=key_file, sth_interval_s=0.5
    )
    db = client[unique_name]
    tree = StoredTree(db["audit_log"])
    with running_audit(settings) as endpoints:
        wait_for(lambda: (head := tree.tree_head()) is not None and head.size == 5, 30, "a signed head of 5 leaves")
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        env = {"IMX_AUDIT_GRPC": f"127.0.0.1:{endpoints.grpc_port}"}
        remembered = tmp_path / "head.json"
        runner = CliRunner()
        result = runner.invoke(app, ["audit", "verify", "--remember", str(remembered)], env=env)
        assert result.exit_code == 0, result.output
        assert "5 of 5 leaves checked" in result.output and "verified" in result.output
        assert remembered.exists()
        result = runner.invoke(app, ["audit", "head"], env=env)
        assert result.exit_code == 0 and "size 5" in result.output, result.output

        leaf = StoredTree(db["audit_log"]).leaf(3)
        assert leaf is not None
        db["audit_events"].update_one({"_id": leaf["id"]}, {"$set": {"status": "delivered-elsewhere"}})
        result = runner.invoke(app, ["audit", "verify", "--remember", str(remembered)], env={**env, "COLUMNS": "250"})
        assert result.exit_code == 1, result.output
        assert "TAMPERED" in result.output
        assert "changed" in result.output and leaf["id"] in result.output and "│ 3 " in result.output


def test_imx_audit_verify_names_an_edited_page_and_a_made_up_record_on_one(
    kafka_bootstrap: str, mongo_uri: str, unique_name: str, client: MongoClient, tmp_path: Path
) -> None:
    """Analysts read trails, listings and exports from pages, copies of the records: a page edited to say
    something else (the records and the log untouched) is tampering too."""
    topics = Topics(prefix=unique_name + ".")
    publish_journey(kafka_bootstrap, topics, STUDY)
    settings = audit_settings(
        kafka_bootstrap, mongo_uri, unique_name, topics, signing_key_file=tmp_path / "k.pem", sth_interval_s=0.5
    )
    db = client[unique_name]
    tree, pages = StoredTree(db["audit_log"]), db["audit_events_pages"]
    with running_audit(settings) as endpoints:
        wait_for(lambda: (head := tree.tree_head()) is not None and head.size == 5, 30, "a signed head of 5 leaves")
        env = {"IMX_AUDIT_GRPC": f"127.0.0.1:{endpoints.grpc_port}", "COLUMNS": "250"}
        runner = CliRunner()
        result = runner.invoke(app, ["audit", "verify"], env=env)
        assert result.exit_code == 0, result.output
        copies = int(re.search(r"(\d+) page copies checked", result.output).group(1))  # type: ignore[union-attr]
        assert copies >= 10, "each record is on its minute's page and its study's"

        page = pages.find_one({"_id": {"$regex": "^s:"}})
        assert page is not None
        # A batch stored again after a crash pages its copies with audit's later clock: not tampering.
        later = [{**copy, "recorded_at": copy["recorded_at"] + timedelta(seconds=30)} for copy in unpack(page)]
        pages.replace_one({"_id": page["_id"]}, {**page, **pack(later)})  # type: ignore[arg-type]
        assert runner.invoke(app, ["audit", "verify"], env=env).exit_code == 0

        edited = unpack(page)
        edited[0]["partner_id"] = "somewhere-else"
        made_up = {**edited[1], "_id": "delivered:made-up", "recorded_at": edited[1]["recorded_at"]}
        pages.replace_one({"_id": page["_id"]}, {**page, **pack([*edited, made_up])})
        pages.insert_one({"_id": "m:0#0", "k": "m:0", "n": 0, "b": b"not a page"})
        result = runner.invoke(app, ["audit", "verify"], env=env)
        assert result.exit_code == 1, result.output
        assert "page_unreadable" in result.output, "named, and the rest still checked"
        assert "page_changed" in result.output and edited[0]["_id"] in result.output
        assert "page_unknown" in result.output and "delivered:made-up" in result.output
        assert STUDY.study not in result.output, "a finding names the kind of page, never its study"
        assert runner.invoke(app, ["audit", "verify", "--skip-pages"], env=env).exit_code == 0
