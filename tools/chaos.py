"""`make chaos`: the fault suite (issue 9 item 7), against the running devstack (started when not).

A ledgered run sends MR instances by C-STORE at a steady rate through a de-identifying route to a
partner whose PACS is a storescp reached by imx's central gateways, while faults are injected one after
another: SIGKILL of each service (its supervisor restarts it) and of the Kafka broker (started again
here), a freeze of the database (SIGSTOP of PostgreSQL and FerretDB), a crash of the database (SIGKILL of
both, started again here), the partner's PACS down. Then
malformed inputs (tools/chaos_inputs.py) through both doors, C-STORE and STOW-RS. The ledger
(tools/chaos_ledger.py) reconciles what the sender was told was accepted with what the PACS stored and
what was quarantined; the ledgered run's audit trails are read back for missing events
(tools/chaos_trail.py). The last line printed is one JSON object; `missed` lists the targets missed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import secrets
import shutil
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from io import BytesIO

from pydicom import dcmread
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from services.cli.settings import CliSettings
from services.common.dicom.part10 import dataset_to_bytes
from services.common.dicom.synthetic import plan_study, study_instances
from services.common.topics import Topics
from tools.bench import renumber_uids
from tools.chaos_faults import freeze_database, kill_broker, kill_database, kill_service
from tools.chaos_figures import ChaosRun, FaultResult, result_line
from tools.chaos_inputs import MR_IMAGE_STORAGE, malformed_input
from tools.chaos_ledger import DoorAnswer, Ledger, caught_up, fuzz_figures, mark, reconcile
from tools.chaos_partner import Pacs, QuarantineReader, Scanner, folder_bytes, meta_end, skip_leftovers
from tools.chaos_procs import SUPERVISED, Watcher
from tools.chaos_send import CStoreClient, StowClient
from tools.chaos_setup import PARTNER, ChaosConfig, configure, unconfigure
from tools.chaos_trail import trail_gaps
from tools.demo.drain import study_trails, wait_quiet
from tools.devstack import Layout, Ports, free_port
from tools.devstack.cli import kafka_admin_config, up
from tools.services_stack import start_services, use_control_token

FAULTS = (*SUPERVISED, "broker", "database", "database-crash", "pacs")
# Audit reads a new partner's receipts from its first delivery to it on, or failing that from its next look
# for topics (every 30 s by default, IMX_PARTNER_TOPIC_DISCOVERY_S).
TRAIL_PATIENCE_S = 40.0
console = Console(highlight=False)


def phase(text: str) -> None:
    console.print(f"[bold]chaos[/bold] {time.strftime('%H:%M:%S')} {text}")
    console.file.flush()  # progress lines show as they happen also when the output is a file


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short faults and few inputs, for development")
    parser.add_argument("--faults", default=",".join(FAULTS), help=f"which, in order (default all: {','.join(FAULTS)})")
    parser.add_argument("--pacs-down-s", type=float, help="how long the partner's PACS is down (600; quick 20)")
    parser.add_argument("--freeze-s", type=float, help="how long the database is frozen (60; quick 10)")
    parser.add_argument("--inputs", type=int, help="malformed inputs (10,000; quick 300); 0 skips them")
    parser.add_argument(
        "--rate", type=float, default=2.0, help="instances/s of the ledgered run; well under what the machine sustains"
    )
    parser.add_argument("--settle-s", type=float, help="steady sending before each fault (20; quick 5)")
    parser.add_argument("--recovery-limit-s", type=float, help="give up waiting for a catch-up after (900; quick 300)")
    parser.add_argument("--profile", default="basic", help="de-identification profile of the ledgered run's route")
    parser.add_argument("--seed", type=int, default=9, help="seed of the malformed inputs")
    args = parser.parse_args(argv)
    quick = args.quick
    for name, full, short in (
        ("pacs_down_s", 600.0, 20.0),
        ("freeze_s", 60.0, 10.0),
        ("inputs", 10_000, 300),
        ("settle_s", 20.0, 5.0),
        ("recovery_limit_s", 900.0, 300.0),
    ):
        if getattr(args, name) is None:
            setattr(args, name, short if quick else full)
    unknown = set(args.faults.split(",")) - set(FAULTS) - {""}
    if unknown:
        parser.error(f"unknown faults: {', '.join(sorted(unknown))}")
    return args


def ledgered_instances(token: bytes) -> Iterator[tuple[str, str, bytes]]:
    """(SOP Instance UID, Study Instance UID, data set bytes) of new MR instances: UIDs of this run,
    marked with its index."""
    offset = int.from_bytes(token[:4], "big") % 10**8
    index, study = 0, 0
    while True:
        for ds in study_instances(plan_study(70_000 + study, "MR", 20, "CHAOS")):
            data = mark(renumber_uids(dataset_to_bytes(ds), offset), token, index)
            start = meta_end(data)
            uids = dcmread(BytesIO(data), stop_before_pixels=True, specific_tags=["SOPInstanceUID", "StudyInstanceUID"])
            yield str(uids.SOPInstanceUID), str(uids.StudyInstanceUID), data[start:]
            index += 1
        study += 1


@dataclass
class SenderStats:
    sent: int = 0
    retries: int = 0


def ledgered_sender(
    client: CStoreClient,
    token: bytes,
    rate: float,
    ledger: Ledger,
    lock: threading.Lock,
    t0: float,
    stop: threading.Event,
    stats: SenderStats,
) -> None:
    """As a modality would: each instance until the door says it is stored, at `rate` per second."""
    for index, (uid, study_uid, dataset) in enumerate(ledgered_instances(token)):
        if stop.is_set():
            break
        with lock:
            ledger.source_uids[index] = uid
            ledger.study_uids.add(study_uid)
        next_at = time.monotonic() + 1.0 / rate
        while not stop.is_set():
            answer = client.send(MR_IMAGE_STORAGE, uid, dataset, "1.2.840.10008.1.2.1")
            if answer.outcome == "accepted":
                with lock:
                    ledger.acknowledged[index] = time.monotonic() - t0
                stats.sent += 1
                break
            stats.retries += 1
            stop.wait(1.0)
        stop.wait(max(0.0, next_at - time.monotonic()))
    client.close()


def wait_recovered(ledger: Ledger, lock: threading.Lock, t0: float, fault_end: float, limit_s: float) -> float | None:
    """Seconds from the fault's end until everything acknowledged before it has arrived (or been
    quarantined) and an instance acknowledged after it has arrived too; None past `limit_s`."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        with lock:
            owed = caught_up(ledger, fault_end - t0)
            first = ledger.first_arrival()
            flowing = any(at >= fault_end - t0 and index in first for index, at in ledger.acknowledged.items())
        if owed and flowing:
            return time.monotonic() - fault_end
        time.sleep(0.5)
    return None


def drain(done: Callable[[], bool], progress: Callable[[], object], stall_s: float, limit_s: float) -> bool:
    """Until `done()`, or no progress (`progress()` unchanged) for `stall_s`, or `limit_s`."""
    deadline, last, last_at = time.monotonic() + limit_s, progress(), time.monotonic()
    while time.monotonic() < deadline:
        if done():
            return True
        now = progress()
        if now != last:
            last, last_at = now, time.monotonic()
        elif time.monotonic() - last_at > stall_s:
            return False
        time.sleep(1.0)
    return done()


def inject(
    fault: str, args: argparse.Namespace, layout: Layout, ports: Ports, watcher: Watcher, pacs: Pacs
) -> tuple[float, str]:
    """Inject one fault; returns (monotonic time the fault ended, what was done)."""
    if fault in SUPERVISED:
        ended = time.monotonic()
        return ended, kill_service(fault, watcher)
    if fault == "broker":
        ended = time.monotonic()
        return ended, kill_broker(layout, ports, watcher)
    if fault == "database":
        detail = freeze_database(layout, args.freeze_s)
        return time.monotonic(), detail
    if fault == "database-crash":
        ended = time.monotonic()
        return ended, kill_database(layout, ports, watcher)
    pacs.stop()
    phase(f"partner PACS down for {args.pacs_down_s:.0f} s")
    time.sleep(args.pacs_down_s)
    pacs.start()
    return time.monotonic(), f"storescp stopped for {args.pacs_down_s:.0f} s"


def run_fuzz(args: argparse.Namespace, cli: CliSettings, fuzz_ae: str, api_key: str) -> list[DoorAnswer]:
    cstore = CStoreClient(fuzz_ae, cli.dicom_host, cli.dicom_port, cli.dicom_ae_title, [MR_IMAGE_STORAGE], 30.0)
    stow = StowClient(f"http://127.0.0.1:{os.environ.get('IMX_CHAOS_STOW_PORT', '8041')}/dicomweb", api_key, 30.0)
    answers: list[DoorAnswer] = []
    columns = (TextColumn("malformed inputs"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    try:
        with Progress(*columns, console=console, transient=False) as progress:
            task = progress.add_task("fuzz", total=args.inputs)
            for index in range(args.inputs):
                item = malformed_input(args.seed, index)
                channel = "c-store" if index % 2 == 0 else "stow-rs"
                for _ in range(4):  # a "try again later" is retried, as a sender would
                    if channel == "c-store":
                        answer = cstore.send(item.sop_class, item.sop_uid, item.dataset, item.transfer_syntax)
                    else:
                        answer = stow.send(item.part10)
                    if answer.outcome != "retry":
                        break
                    time.sleep(1.0)
                outcome = "error" if answer.outcome == "retry" else answer.outcome
                answers.append(
                    DoorAnswer(
                        index,
                        item.kind,
                        channel,
                        item.sop_uid,
                        outcome,
                        answer.reason,
                        answer.seconds,
                        answer.http_status,
                    )
                )
                progress.advance(task)
    finally:
        cstore.close()
        stow.close()
    return answers


class Run:
    """One chaos run's moving parts, so that whatever happens the setup is undone and nothing is left
    running."""

    def __init__(self, args: argparse.Namespace, layout: Layout, ports: Ports, cli: CliSettings) -> None:
        self.args, self.layout, self.ports, self.cli = args, layout, ports, cli
        self.token = secrets.token_bytes(8)
        self.folder = layout.var / "chaos" / f"run-{self.token.hex()}"
        self.pacs = Pacs(self.folder / "received", free_port())
        self.ledger, self.lock, self.t0 = Ledger(), threading.Lock(), time.monotonic()
        self.scanner = Scanner(self.pacs.folder, self.ledger, self.lock, self.token, self.t0)
        self.watcher = Watcher(layout.run)
        self.stop_sender = threading.Event()
        self.stats = SenderStats()
        self.faults: list[FaultResult] = []
        self.answers: list[DoorAnswer] = []
        self.audit_gaps: dict[str, int] | None = None

    def ledgered(self, config: ChaosConfig) -> None:
        args, ledger, lock, t0 = self.args, self.ledger, self.lock, self.t0
        cli = self.cli
        client = CStoreClient(
            config.ae_title, cli.dicom_host, cli.dicom_port, cli.dicom_ae_title, [MR_IMAGE_STORAGE], 60
        )
        sender = threading.Thread(
            target=ledgered_sender,
            args=(client, self.token, args.rate, ledger, lock, t0, self.stop_sender, self.stats),
            daemon=True,
        )
        sender.start()
        phase(f"ledgered run: {args.rate:g} MR instances/s by C-STORE, route profile {args.profile or 'pass-through'}")
        recovered = wait_recovered(ledger, lock, t0, time.monotonic(), args.recovery_limit_s)
        if recovered is None:
            raise RuntimeError("nothing arrived at the partner's PACS: is the pipeline working? (var/log/*.log)")
        phase(f"first instances arrived after {recovered:.1f} s")
        for fault in [f for f in args.faults.split(",") if f]:
            time.sleep(args.settle_s)
            phase(f"fault: {fault}")
            ended, detail = inject(fault, args, self.layout, self.ports, self.watcher, self.pacs)
            recovery = wait_recovered(ledger, lock, t0, ended, args.recovery_limit_s)
            self.faults.append(FaultResult(fault, recovery, detail))
            phase(f"  {detail}; caught up after " + ("NEVER" if recovery is None else f"{recovery:.1f} s"))
        self.stop_sender.set()
        sender.join(timeout=120)
        phase(f"ledgered run stopped: {self.stats.sent} acknowledged, {self.stats.retries} retries; draining")

        def ledger_done() -> bool:
            with lock:
                return caught_up(ledger, float("inf"))

        drain(ledger_done, lambda: len(ledger.arrivals), 180.0, args.recovery_limit_s)
        self.audit_gaps = self.read_audit_trail(config)

    def read_audit_trail(self, config: ChaosConfig) -> dict[str, int]:
        """What the audit trail lacks for the ledgered run, read when the consumers are idle, and again
        while it keeps filling in, for up to `TRAIL_PATIENCE_S`: receipts of a partner audit had not yet
        found come in as soon as it does (read from the topic's start)."""
        with self.lock:
            first = self.ledger.first_arrival()
            acknowledged = {self.ledger.source_uids[i] for i in self.ledger.acknowledged}
            arrived = {self.ledger.source_uids[i] for i in first if i in self.ledger.source_uids}
            studies = set(self.ledger.study_uids)
        reader = self.cli.model_copy(update={"audit_api_key": config.audit_api_key})
        started = time.monotonic()
        deadline, fewest = started + self.args.recovery_limit_s, None
        while True:
            wait_quiet(self.cli, deadline)
            events = [event for trail in study_trails(reader, sorted(studies)) for event in trail["events"]]
            gaps = trail_gaps(events, acknowledged, arrived)
            missing, now = sum(gaps.values()), time.monotonic()
            done = not missing or now > deadline
            stuck = fewest is not None and missing >= fewest and now - started > TRAIL_PATIENCE_S
            if done or stuck:
                phase(f"audit trail of {len(studies)} studies read: events missing per hop {gaps}")
                return gaps
            fewest = missing if fewest is None else min(fewest, missing)
            time.sleep(10.0)

    def malformed(self, config: ChaosConfig, reader: QuarantineReader) -> None:
        args, ledger, lock = self.args, self.ledger, self.lock
        phase(f"{args.inputs} malformed inputs through C-STORE and STOW-RS (seed {args.seed})")
        self.answers = run_fuzz(args, self.cli, config.fuzz_ae_title, config.fuzz_api_key)
        owed = {a.sop_uid for a in self.answers if a.outcome == "accepted"}

        def ended() -> set[str]:
            with lock:
                return self.scanner.delivered_uids | set(ledger.quarantined) | set(reader.dead_lettered)

        # Progress: an input ended, or the PACS received more bytes (it writes a file as the data
        # arrives). A large instance takes minutes to send (a deflate bomb inflated for a PACS without
        # deflate: 30-130 s each) while no input ends; the gateway's own temp files are not counted, as
        # a gateway fetching the same instance again and again would look busy.
        def progress() -> tuple[int, int]:
            return len(ended()), folder_bytes(self.pacs.folder)

        phase(f"{len(owed)} malformed inputs were accepted; waiting for them to be delivered or quarantined")
        drain(lambda: owed <= ended(), progress, 120.0, args.recovery_limit_s)
        time.sleep(5.0)  # the last quarantine events of rejected inputs

    def figures(self, reader: QuarantineReader, extra: dict[str, object]) -> dict[str, object]:
        with self.lock:
            reconciled = reconcile(self.ledger, {a.sop_uid for a in self.answers})
            fuzz = (
                fuzz_figures(
                    self.answers,
                    self.scanner.delivered_uids,
                    {**reader.dead_lettered, **self.ledger.quarantined},
                    reader.door_events,
                )
                if self.answers
                else None
            )
        extra.update(
            {
                "quarantine_reasons": reader.reasons,
                "gateway_dead_letters": len(reader.dead_lettered),
                "gateway_dead_letter_reasons": dict(Counter(reader.dead_lettered.values())),
                "pipeline_dead_letters": reader.pipeline_dead_letters,
                "sender_retries": self.stats.retries,
                "audit_gaps": self.audit_gaps,
                "seconds": round(time.monotonic() - self.t0, 1),
                "faults_detail": {f.name: f.detail for f in self.faults},
                "args": dict(vars(self.args)),
                "load_after": [round(v, 2) for v in os.getloadavg()],
                "date": time.strftime("%Y-%m-%d %H:%M"),
            }
        )
        if fuzz and fuzz.problems:
            details = self.layout.var / "chaos" / f"problems-{self.token.hex()}.json"
            details.write_text(json.dumps([dataclasses.asdict(a) for a in fuzz.problems], indent=1))
            extra["problems_file"] = str(details)
        run = ChaosRun(reconciled, fuzz, self.faults, dict(self.watcher.crashes), dict(self.watcher.peak_mb), extra)
        return result_line(run, self.args.recovery_limit_s)

    def execute(self) -> dict[str, object]:
        extra: dict[str, object] = {"load_before": [round(v, 2) for v in os.getloadavg()]}
        topics = Topics(os.environ.get("IMX_TOPIC_PREFIX", ""))
        try:
            self.pacs.start()
            bootstrap, admin = f"127.0.0.1:{self.ports.kafka}", kafka_admin_config(self.layout)
            if skipped := skip_leftovers(bootstrap, topics, PARTNER, admin):
                phase(f"skipped {skipped} deliveries an interrupted earlier run left on the partner's feed")
            config = configure(self.cli, self.pacs.url, self.args.profile)
            try:
                phase(f"configured: senders {config.org} and {config.fuzz_org}, partner PACS {self.pacs.url}")
                reader = QuarantineReader(
                    f"127.0.0.1:{self.ports.kafka}",
                    topics,
                    kafka_admin_config(self.layout),
                    (config.org, config.fuzz_org),
                    PARTNER,
                    self.ledger,
                    self.lock,
                )
                self.scanner.start()
                reader.start()
                self.watcher.start()
                try:
                    self.ledgered(config)
                    if self.args.inputs:
                        self.malformed(config, reader)
                finally:
                    self.stop_sender.set()
                    self.watcher.stop()
                    self.scanner.stop()
                    reader.stop()
            finally:
                unconfigure(self.cli, config)
        finally:
            self.pacs.stop()
            shutil.rmtree(self.folder, ignore_errors=True)
        return self.figures(reader, extra)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a stopped run still cleans up
    layout, ports, cli = Layout.default(os.environ), Ports.from_env(os.environ), CliSettings()
    up(layout, ports)
    start_services(layout, ports)
    use_control_token(layout)
    figures = Run(args, layout, ports, cli).execute()
    for missed in figures["missed"]:  # type: ignore[attr-defined]
        phase(f"[red]target missed[/red]: {missed}")
    print(json.dumps(figures), flush=True)
    return 1 if figures["missed"] else 0


if __name__ == "__main__":
    sys.exit(main())
