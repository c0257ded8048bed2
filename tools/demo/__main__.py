"""`make run`: infrastructure, the five services, then a demo through the whole pipeline.

Three trusts send a synthetic data set (trust-north and trust-west over C-STORE, trust-east over
STOW-RS) to three partners; the summary comes from the audit trail, so it shows what really happened.
Each partner is registered with a folder endpoint (var/demo/received/<partner>): imx's central
gateway fetches what it was delivered and stores it there, and the summary counts the files that
arrived in each folder.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from services.cli.settings import CliSettings
from services.common.dicom.synthetic import DemoManifest, write_demo_data
from services.routing.admin import route_from_proto
from services.routing.rules import RoutingInput, decide
from tools.demo.drain import TrailCounts, wait_until_drained
from tools.demo.senders import c_store, stow_rs
from tools.demo.setup_demo import PARTNERS, ROUTES, TRUSTS, configure, partner_folder
from tools.devstack import DevstackError, Layout, Ports
from tools.devstack.cli import up
from tools.services_stack import start_services

console = Console()
ORG_OF_SOURCE = {ae: org for org, ae in TRUSTS.items()}
STOW_ORGS = {"trust-east"}


def expected_terminal_events(manifest: DemoManifest) -> int:
    """One terminal event per (instance, destination): what the demo's routes should produce."""
    routes = [route_from_proto(r) for r in ROUTES]
    total = 0
    for study in manifest.studies:
        item = RoutingInput(ORG_OF_SOURCE[study.source], "", {"modality": study.modality})
        total += max(1, len(decide(routes, item))) * len(study.files)
    return total


def main() -> int:
    layout, ports = Layout.default(os.environ), Ports.from_env(os.environ)
    studies = int(os.environ.get("IMX_DEMO_STUDIES", "12"))
    cli = CliSettings()
    try:
        up(layout, ports)
        start_services(layout, ports)
    except DevstackError as error:
        console.print(f"[red]{error}[/red]")
        return 2
    received = layout.var / "demo" / "received"
    config = configure(cli, received)
    # Folders keep earlier runs' files: this run's arrivals are counted from here.
    baseline = {p: files_in(partner_folder(received, p)) for p in PARTNERS}
    seed = int(time.time()) % 1_000_000  # a new data set each run; re-sending the same one would be deduplicated
    data_dir = layout.var / "demo" / f"seed-{seed}"
    console.print(f"writing {studies} synthetic studies (seed {seed}) into {data_dir}")
    manifest = write_demo_data(data_dir, studies, seed)
    by_org: dict[str, list[Path]] = {}
    for study in manifest.studies:
        by_org.setdefault(ORG_OF_SOURCE[study.source], []).extend(study.files)

    started = time.monotonic()
    started_at = datetime.now(UTC)
    accepted: dict[str, int] = {}
    errors: list[str] = []
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), console=console) as bar:
        task = bar.add_task("sending", total=len(manifest.files))

        def send(org: str, files: list[Path]) -> None:
            try:
                if org in STOW_ORGS:
                    accepted[org] = stow_rs(
                        files, cli.stow_url, config.api_keys[org], on_sent=lambda n: bar.advance(task, n)
                    )
                else:
                    accepted[org] = c_store(
                        files,
                        TRUSTS[org],
                        cli.dicom_host,
                        cli.dicom_port,
                        cli.dicom_ae_title,
                        on_sent=lambda n: bar.advance(task, n),
                    )
            except Exception as exc:
                errors.append(f"{org}: {exc}")

        threads = [threading.Thread(target=send, args=item) for item in by_org.items()]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    sent_seconds = time.monotonic() - started
    if errors:
        for problem in errors:
            console.print(f"[red]{problem}[/red]")
        return 1
    console.print(f"sent {len(manifest.files)} instances in {sent_seconds:.1f}s; waiting for the pipeline to drain")
    expected = expected_terminal_events(manifest)
    reader = cli.model_copy(update={"audit_api_key": config.audit_api_key})
    counts = wait_until_drained(reader, [s.study_instance_uid for s in manifest.studies], expected)
    # From the first byte sent to the last delivery the audit trail recorded (not to the end of waiting).
    last = counts.last_delivered_at or datetime.now(UTC)
    elapsed = (last - started_at).total_seconds()
    arrived = wait_for_folders(received, baseline, counts.delivered_by_partner)
    print_summary(manifest, accepted, counts, elapsed, arrived)
    if counts.terminal < expected:
        console.print(f"[red]only {counts.terminal} of {expected} deliveries/quarantines were seen in time[/red]")
        return 1
    short = {p: n for p, n in counts.delivered_by_partner.items() if arrived.get(p, 0) < n}
    if short:
        console.print(f"[red]not every delivery arrived in the partners' folders in time: {sorted(short)}[/red]")
        return 1
    console.print(f"Stop everything with [bold]make stop[/bold]. Logs: var/log/; audit API: {cli.audit_url}/docs")
    console.print(f"What each partner received: {received}/<partner>/<study>/<series>/<instance>.dcm")
    return 0 if sum(accepted.values()) == len(manifest.files) else 1


def files_in(folder: Path) -> int:
    return sum(1 for _ in folder.rglob("*.dcm")) if folder.is_dir() else 0


def wait_for_folders(
    received: Path, baseline: dict[str, int], delivered: Mapping[str, int], timeout_s: float = 120.0
) -> dict[str, int]:
    """Files that arrived in each partner's folder during this run, once every delivery is there (or at
    the timeout): the central gateway stores them as it reads the partners' feeds."""
    deadline = time.monotonic() + timeout_s
    while True:
        arrived = {p: files_in(partner_folder(received, p)) - n for p, n in baseline.items()}
        if all(arrived.get(p, 0) >= n for p, n in delivered.items()) or time.monotonic() > deadline:
            return arrived
        time.sleep(0.5)


def print_summary(
    manifest: DemoManifest, accepted: dict[str, int], counts: TrailCounts, elapsed: float, arrived: dict[str, int]
) -> None:
    sent = len(manifest.files)
    table = Table(title="imx demo: every instance accounted for by the audit trail")
    table.add_column("what")
    table.add_column("count", justify="right")
    table.add_row("instances sent", str(sent))
    for org in sorted(accepted):
        channel = "STOW-RS" if org in STOW_ORGS else "C-STORE"
        table.add_row(f"  accepted from {org} ({channel})", str(accepted[org]))
    table.add_row("ingested (audit)", str(counts.ingested))
    for partner, n in sorted(counts.delivered_by_partner.items()):
        table.add_row(f"delivered to {partner}", str(n))
    for partner, n in sorted(arrived.items()):
        table.add_row(f"  in {partner}'s folder (central gateway)", str(n))
    for partner, n in sorted(counts.failed_by_partner.items()):
        table.add_row(f"failed for {partner}", str(n))
    table.add_row("quarantined", str(sum(counts.quarantined_by_reason.values())))
    for reason, n in sorted(counts.quarantined_by_reason.items()):
        table.add_row(f"  {reason}", str(n))
    table.add_row("dead letters", str(counts.dead_letters))
    table.add_row("elapsed seconds (send → last delivery)", f"{elapsed:.1f}")
    table.add_row("instances/s (end to end)", f"{sent / elapsed:.1f}")
    console.print(table)


if __name__ == "__main__":
    sys.exit(main())
