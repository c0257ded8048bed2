"""The partner's side of an end-to-end test: `imx gateway run` as a process of its own, signed in on the
broker's partner listener with what delivery issued for the partner, its output written to a log file;
and a PACS on 127.0.0.1 whose answer to each C-STORE the test scripts, to take the gateway's fault paths
(a target not listening yet, an out-of-resources status retried, a refusal dead-lettered)."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.sop_class import MRImageStorage  # type: ignore[attr-defined]

from services.common.kafka_access import group_prefix
from services.common.topics import Topics
from services.proto_gen.imx.v1 import admin_pb2
from tests.e2e.stack import ROOT, Stack
from tools.bench_partner import gateway_command
from tools.bench_setup import PartnerCredentials
from tools.devstack import ManagedProcess, start_process
from tools.feed_backlog import backlog

Answer = Callable[[str, int], int]  # (SOP Instance UID, attempt, from 1) -> C-STORE status
DONE = re.compile(
    r"^done: stored (\d+), duplicates \d+, superseded \d+, retried (\d+), dead-lettered (\d+)", re.MULTILINE
)


@contextmanager
def gateway_process(
    stack: Stack, partner_id: str, added: admin_pb2.AddPartnerReply, target: str, work: Path
) -> Iterator[ManagedProcess]:
    """`imx gateway run` for the partner into `target`, with short waits between attempts, its state
    folder and its log (`gateway.log`) in `work`; stopped by SIGTERM when the block ends, so its log ends
    with the `done:` summary."""
    access = added.kafka_access
    credentials = PartnerCredentials(
        username=access.username,
        password=access.password,
        security_protocol=access.security_protocol or "SASL_PLAINTEXT",
        dicomweb_key=added.dicomweb_key,
    )
    argv, env = gateway_command(
        partner_id,
        stack.kafka_partner,
        credentials,
        target,
        work / "state",
        *("--max-attempts", "3", "--backoff-cap", "0.5", "--unreachable-cap", "1"),
        topic_prefix=stack.prefix,
        # rich wraps its lines at the terminal width, 80 in a file: a value could hide in a wrap
        env={"COLUMNS": "400"},
    )
    gateway = start_process(
        f"gateway-{partner_id}", argv, work / "gateway.log", env=env, cwd=ROOT, die_with_parent=True
    )
    try:
        yield gateway
    finally:
        gateway.stop(timeout=30)


def unsettled(stack: Stack, partner_id: str) -> int:
    """Messages on the partner's feed (every lane) that its gateway has not committed: it commits a
    message once it is stored, dead-lettered or skipped and its receipt is written. Some refusals
    (a transfer syntax it cannot convert) never reach the target, so only the gateway can tell."""
    admin = KafkaAdminClient(bootstrap_servers=stack.kafka)
    consumer = KafkaConsumer(bootstrap_servers=stack.kafka, metrics_enabled=False)
    try:
        feeds = Topics(stack.prefix).partner_lanes(partner_id)
        partitions = [TopicPartition(t, p) for t in feeds for p in consumer.partitions_for_topic(t) or ()]
        return backlog(admin, consumer, f"{group_prefix(partner_id)}gateway", partitions)[1]
    finally:
        consumer.close()
        admin.close()


def summary(log: str) -> tuple[int, int, int]:
    """(stored, retried, dead-lettered) from the gateway's `done:` line; AssertionError without one."""
    found = DONE.search(log)
    assert found is not None, f"no summary in the gateway's log:\n{log[-2000:]}"
    return int(found[1]), int(found[2]), int(found[3])


class ScriptedPacs:
    """A C-STORE SCP on 127.0.0.1 (pynetdicom, in this process) answering each request with
    `answer(sop_instance_uid, attempt)`; it never decodes the data set it is sent."""

    def __init__(self, port: int, answer: Answer, ae_title: str = "CANARYPACS") -> None:
        self.port, self.ae_title = port, ae_title
        self._answer = answer
        self._lock = threading.Lock()
        self.answers: dict[str, list[int]] = {}  # SOP Instance UID -> statuses, in order
        self._server: Any = None

    @property
    def url(self) -> str:
        return f"dicom://{self.ae_title}@127.0.0.1:{self.port}"

    def _on_store(self, event: Any) -> int:
        sop = str(event.request.AffectedSOPInstanceUID)
        with self._lock:
            statuses = self.answers.setdefault(sop, [])
            statuses.append(self._answer(sop, len(statuses) + 1))
            return statuses[-1]

    def start(self) -> None:
        ae = AE(ae_title=self.ae_title)
        ae.add_supported_context(MRImageStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        self._server = ae.start_server(
            ("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._on_store)]
        )

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None
