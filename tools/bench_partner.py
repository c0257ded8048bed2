"""The partner's side of `make bench`: a dcmtk `storescp` as its PACS, the partner gateway (`imx
gateway run`) as a process of its own signed in on the broker's partner listener, and a reader of
the gateway's receipts on the internal listener."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

from services.common.kafka_access import group_prefix
from services.common.topics import Topics
from services.proto_gen.imx.v1 import events_pb2
from tools.bench_results import StoredReceipt
from tools.bench_setup import PARTNER, PartnerCredentials
from tools.devstack.processes import ManagedProcess, start_process
from tools.dicom_peers import StoreScp, start_storescp
from tools.feed_backlog import backlog, skip_to_end

ROOT = Path(__file__).resolve().parent.parent
GATEWAY_GROUP = f"{group_prefix(PARTNER)}gateway"  # services/gateway/runner.py consumer_for


@dataclass
class PartnerSide:
    storescp: StoreScp
    gateway: ManagedProcess


def gateway_command(
    partner: str,
    partner_bootstrap: str,
    credentials: PartnerCredentials,
    target: str,
    state_dir: Path,
    *options: str,
    topic_prefix: str | None = None,
    env: Mapping[str, str] | None = None,
) -> tuple[list[str], dict[str, str]]:
    """The command line and environment of `imx gateway run` for `partner`, signed in on the broker's
    partner listener into `target`, its state in `state_dir`; `options` are more of its flags, `env` more
    variables. The secrets go in the environment, never in the command line, which `ps` shows. Without
    `topic_prefix` the gateway inherits this process's IMX_TOPIC_PREFIX, if any."""
    argv = [
        sys.executable,
        "-c",
        "from services.cli.main import main; main()",
        "gateway",
        "run",
        "--partner",
        partner,
        "--bootstrap",
        partner_bootstrap,
        "--username",
        credentials.username,
        "--security-protocol",
        credentials.security_protocol,
        "--target",
        target,
        "--state-dir",
        str(state_dir),
        *options,
    ]
    environment = {
        **os.environ,
        "IMX_GATEWAY_PASSWORD": credentials.password,
        "IMX_GATEWAY_DICOMWEB_KEY": credentials.dicomweb_key,
        "PYTHONUNBUFFERED": "1",
        **({} if topic_prefix is None else {"IMX_TOPIC_PREFIX": topic_prefix}),
        **(env or {}),
    }
    return argv, environment


def start_gateway(
    state_dir: Path, credentials: PartnerCredentials, partner_bootstrap: str, storescp: StoreScp, log: Path
) -> ManagedProcess:
    state_dir.mkdir(parents=True, exist_ok=True)
    argv, env = gateway_command(PARTNER, partner_bootstrap, credentials, storescp.url, state_dir)
    return start_process(
        "bench-gateway", argv, log, env=env, cwd=ROOT, endpoint=partner_bootstrap, die_with_parent=True
    )


@contextmanager
def partner_side(
    folder: Path, credentials: PartnerCredentials, partner_bootstrap: str, log: Path
) -> Iterator[PartnerSide]:
    """storescp and the gateway; the gateway's log (appended, kept after the run) is `log`."""
    storescp = start_storescp(folder / "received", ae_title="BENCHPACS")
    try:
        gateway = start_gateway(folder / "gateway-state", credentials, partner_bootstrap, storescp, log)
        try:
            yield PartnerSide(storescp, gateway)
        finally:
            gateway.stop(timeout=15)
    finally:
        storescp.stop()


def gateway_lag(admin: KafkaAdminClient, consumer: KafkaConsumer, topic: str) -> int | None:
    """Messages on the partner's feed the gateway's group has not committed; None while the group has
    no member yet (it has not joined, so it has not started reading)."""
    group = admin.describe_groups([GATEWAY_GROUP]).get(GATEWAY_GROUP, {})
    if group.get("group_state") != "Stable" or not group.get("members"):
        return None
    partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
    return backlog(admin, consumer, GATEWAY_GROUP, partitions)[1]


def skip_leftovers(bootstrap: str, topics: Topics, client_config: Mapping[str, str] | None = None) -> int:
    """Move the gateway's group to the end of the partner's feed (every lane of it) before the gateway
    starts: what an interrupted earlier run left there is not this run's work. Returns how many
    messages were skipped."""
    prefix = topics.partner(PARTNER).removesuffix(".v1")
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, **(client_config or {}))
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, metrics_enabled=False, **(client_config or {}))
    try:
        feeds = [
            t for t in consumer.topics() if t == f"{prefix}.v1" or (t.startswith(f"{prefix}.") and t.endswith(".v1"))
        ]
        return skip_to_end(admin, consumer, GATEWAY_GROUP, feeds)
    finally:
        consumer.close()
        admin.close()


def wait_gateway_ready(
    side: PartnerSide,
    bootstrap: str,
    topics: Topics,
    timeout_s: float = 180.0,
    client_config: Mapping[str, str] | None = None,
) -> None:
    """Until the gateway has joined its group and has nothing left to read, so this run's clock starts
    with an idle gateway."""
    topic = topics.partner(PARTNER)
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, **(client_config or {}))
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, metrics_enabled=False, **(client_config or {}))
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            if not side.gateway.alive():
                raise RuntimeError(f"the gateway exited; end of {side.gateway.log_path}:\n{side.gateway.log_tail()}")
            lag = gateway_lag(admin, consumer, topic)
            if lag == 0:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the gateway did not catch up within {timeout_s:.0f} s (lag {lag})")
            time.sleep(0.5)
    finally:
        consumer.close()
        admin.close()


class ReceiptReader:
    """STORED receipts on the partner's receipts topic from now on (assigned, not in a group)."""

    def __init__(self, bootstrap: str, topics: Topics, client_config: Mapping[str, str] | None = None) -> None:
        topic = topics.receipts(PARTNER)
        self._consumer = KafkaConsumer(
            bootstrap_servers=bootstrap,
            enable_auto_commit=False,
            metrics_enabled=False,
            group_id=None,
            # The instrument should not weigh on what it measures (the broker's CPU is counted): with the
            # defaults (1 byte, 500 ms) it made 180 of the 509 fetch requests of a 300-instance run (0.6 per
            # instance). Latencies come from the receipts' own timestamps: reading them later changes none.
            fetch_min_bytes=256 * 1024,
            fetch_max_wait_ms=1000,
            **(client_config or {}),
        )
        partitions = [TopicPartition(topic, p) for p in self._consumer.partitions_for_topic(topic) or ()]
        if not partitions:
            raise RuntimeError(f"no topic {topic}")
        self._consumer.assign(partitions)
        self._consumer.seek_to_end(*partitions)
        for tp in partitions:
            self._consumer.position(tp)  # resolve "end" now, before anything is sent
        self.receipts: list[StoredReceipt] = []

    def poll(self, timeout_ms: int = 200) -> None:
        for records in self._consumer.poll(timeout_ms=timeout_ms).values():
            for record in records:
                receipt = events_pb2.DeliveryReceipt.FromString(record.value)
                if receipt.status == events_pb2.STORE_STATUS_STORED:
                    self.receipts.append(
                        StoredReceipt(receipt.delivery_id, receipt.meta.ingested_at_ms, receipt.stored_at_ms)
                    )

    def close(self) -> None:
        self._consumer.close()
