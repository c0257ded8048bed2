"""`imx gateway`: the partner gateway (run it; list and replay its dead letters)."""

from __future__ import annotations

import logging
import signal
import threading
import time
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape

if TYPE_CHECKING:
    from services.gateway.runner import GatewaySettings
    from services.gateway.targets import Target

console = Console()
# A Kafka error this long after the start is not a refused sign-in (kafka-python gives that up within
# its 10 s bootstrap wait, or at the group's first join).
STARTUP_S = 60.0
gateway_app = typer.Typer(
    help="The partner gateway: feed → fetch → verify → store into a PACS or folder.", no_args_is_help=True
)
dead_letters_app = typer.Typer(
    help="Deliveries the gateway gave up on, kept under its state folder.", no_args_is_help=True
)
gateway_app.add_typer(dead_letters_app, name="dead-letters")

TargetOption = Annotated[
    str,
    typer.Option(
        envvar="IMX_GATEWAY_TARGET",
        help="where to store: dicom://AE@host:port[?calling=AE], https://host/dicomweb (STOW-RS) or file:///folder",
    ),
]
StateDirOption = Annotated[
    Path,
    typer.Option(envvar="IMX_GATEWAY_STATE_DIR", help="the gateway's own folder: temp files, record, dead letters"),
]
PartnerOption = Annotated[str, typer.Option(envvar="IMX_GATEWAY_PARTNER", help="partner id")]
DicomwebKeyOption = Annotated[
    str,
    typer.Option(envvar="IMX_GATEWAY_DICOMWEB_KEY", help="the partner's DICOMweb key (better in the environment)"),
]
BootstrapOption = Annotated[str, typer.Option(envvar="IMX_GATEWAY_BOOTSTRAP", help="imx's partner Kafka listener")]
UsernameOption = Annotated[str | None, typer.Option(envvar="IMX_GATEWAY_USERNAME", help="Kafka user (the partner id)")]
PasswordOption = Annotated[
    str | None, typer.Option(envvar="IMX_GATEWAY_PASSWORD", help="its password (better in the environment)")
]


class SecurityProtocol(StrEnum):
    PLAINTEXT = "PLAINTEXT"
    SASL_PLAINTEXT = "SASL_PLAINTEXT"
    SASL_SSL = "SASL_SSL"
    SSL = "SSL"


ProtocolOption = Annotated[
    SecurityProtocol,
    typer.Option(envvar="IMX_GATEWAY_SECURITY_PROTOCOL", help="SASL_PLAINTEXT here, SASL_SSL in production"),
]
CaFileOption = Annotated[
    Path | None,
    typer.Option(
        "--ssl-cafile",
        envvar="IMX_GATEWAY_SSL_CAFILE",
        exists=True,
        dir_okay=False,
        help="PEM file of the CA that signs imx's brokers' certificates (SASL_SSL); default: the system's CAs",
    ),
]


def _target(url: str) -> Target:
    from services.gateway.targets import FolderTarget, TargetError, parse_target

    try:
        target = parse_target(url)
    except TargetError as error:
        console.print(f"[red]bad --target[/red]: {error}")
        raise typer.Exit(2) from None
    if isinstance(target, FolderTarget) and target.root.exists() and not target.root.is_dir():
        # It would wait for ever for a folder to appear there; a missing one may be a share not mounted yet.
        console.print(f"[red]bad --target[/red]: {escape(str(target.root))} is a file, not a folder")
        raise typer.Exit(2)
    if isinstance(target, FolderTarget) and not target.root.exists():
        console.print(
            f"[yellow]{escape(str(target.root))} does not exist[/yellow]: nothing is stored until it does "
            "(it is never made here: a share not mounted yet would be written on the local disk)"
        )
    return target


def _settings(
    partner: str,
    target: str,
    bootstrap: str,
    username: str | None,
    password: str | None,
    security_protocol: str,
    dicomweb_key: str,
    state_dir: Path,
    max_attempts: int = 10,
    idle_exit: float | None = None,
    backoff_cap: float = 300.0,
    window: int = 50,
    unreachable_cap: float = 30.0,
    ssl_cafile: Path | None = None,
) -> GatewaySettings:
    from services.common.settings import ServiceSettings
    from services.common.topics import Topics, validate_partner_id
    from services.gateway.policy import RetryPolicy
    from services.gateway.runner import GatewaySettings, KafkaSignIn

    try:
        validate_partner_id(partner)
    except ValueError as error:
        console.print(f"[red]{error}[/red]")
        raise typer.Exit(2) from None
    if bool(username) != bool(password):
        console.print("[red]give both --username and --password[/red] (or neither, for the internal listener)")
        raise typer.Exit(2)
    return GatewaySettings(
        partner_id=partner,
        target=_target(target),
        kafka=KafkaSignIn(bootstrap, username, password, security_protocol, ssl_cafile),
        dicomweb_key=dicomweb_key,
        state_dir=state_dir,
        topics=Topics(ServiceSettings().topic_prefix),
        policy=RetryPolicy.capped(max_attempts, backoff_cap, unreachable_cap),
        idle_exit_s=idle_exit,
        window=window,
    )


def _sign_in_failed(bootstrap: str, error: Exception, running_s: float | None = None) -> typer.Exit:
    """`running_s`: how long the gateway had run; a failure past start-up is not a sign-in's, and what
    was stored is kept (its record and receipts), what was not is read again at the next start."""
    if running_s is not None and running_s > STARTUP_S:
        console.print(
            f"[red]Kafka at {bootstrap} failed after {running_s:.0f} s[/red]: {type(error).__name__}; "
            "start the gateway again: what was stored is recorded, the rest is read again"
        )
        return typer.Exit(1)
    console.print(
        f"[red]cannot use Kafka at {bootstrap}[/red]: {type(error).__name__}. kafka-python reports a refused "
        "SASL sign-in (wrong user or password) as a timeout waiting for the broker, exactly like an "
        "unreachable address: check --bootstrap, --username and the password"
    )
    return typer.Exit(1)


@gateway_app.command("run")
def run(
    partner: PartnerOption,
    target: TargetOption,
    bootstrap: BootstrapOption,
    dicomweb_key: DicomwebKeyOption,
    username: UsernameOption = None,
    password: PasswordOption = None,
    security_protocol: ProtocolOption = SecurityProtocol.SASL_PLAINTEXT,
    ssl_cafile: CaFileOption = None,
    state_dir: StateDirOption = Path("imx-gateway-state"),
    max_attempts: Annotated[
        int, typer.Option(min=1, help="attempts the target answered before an instance is dead-lettered")
    ] = 10,
    backoff_cap: Annotated[float, typer.Option(min=0.05, help="longest wait between attempts, seconds")] = 300.0,
    unreachable_cap: Annotated[
        float,
        typer.Option(min=0.05, help="longest wait between attempts while the target cannot be reached at all, seconds"),
    ] = 30.0,
    idle_exit: Annotated[
        float | None, typer.Option(help="exit after this many seconds without new messages (tests; default: never)")
    ] = None,
    window: Annotated[
        int, typer.Option(min=1, help="in-flight window: messages read per poll and committed together")
    ] = 50,
) -> None:
    """Consume the partner's feed and store every delivered instance into TARGET, reporting receipts.

    Stops cleanly on Ctrl-C or SIGTERM: what is stored is committed, the rest is read again next time."""
    from kafka.errors import KafkaError

    from services.gateway.runner import run_gateway
    from services.gateway.targets import describe
    from services.gateway.worker import Counters, GatewayStopped

    settings = _settings(
        partner,
        target,
        bootstrap,
        username,
        password,
        security_protocol,
        dicomweb_key,
        state_dir,
        max_attempts,
        idle_exit,
        backoff_cap,
        window,
        unreachable_cap,
        ssl_cafile,
    )
    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)  # its connection errors are our statuses
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    console.print(
        f"gateway for {partner}: {settings.topics.partner(partner)} → {describe(settings.target)} "
        f"(state in {state_dir}; Ctrl-C stops)"
    )
    shown = {"at": 0.0}
    last_line = [""]

    def show(counters: Counters) -> None:
        now, line = time.monotonic(), counters.line()
        if line != last_line[0] and (now - shown["at"] >= 2 or counters.waiting):
            console.print(line)
            shown["at"], last_line[0] = now, line

    started = time.monotonic()
    try:
        counters = run_gateway(settings, stop, show)
    except GatewayStopped as error:
        console.print(f"[red]gateway stopped[/red]: {error}")
        raise typer.Exit(1) from None
    except KafkaError as error:
        raise _sign_in_failed(bootstrap, error, time.monotonic() - started) from None
    console.print(f"done: {counters.line()}")


@dead_letters_app.command("list")
def list_dead_letters(state_dir: StateDirOption = Path("imx-gateway-state")) -> None:
    """Dead letters of a gateway, oldest file name first: delivery id, last status, attempts, when."""
    from services.gateway.records import DeadLetters
    from services.gateway.worker import state_paths

    folder = state_paths(state_dir)[2]
    if not state_dir.is_dir():  # a mistyped --state-dir: "no dead letters" would be a false all-clear
        console.print(f"[red]no gateway state folder {state_dir}[/red]: is --state-dir the gateway's?")
        raise typer.Exit(2)
    if not folder.is_dir():
        console.print(f"no dead letters (no folder {folder})")
        return
    dead_letters = DeadLetters(folder)
    letters = list(dead_letters)
    for letter in letters:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(letter.dead_lettered_at_ms / 1000))
        console.print(
            f"{letter.delivery_id}  {letter.status}  attempts={letter.attempts}  {letter.target_kind}  {when}"
        )
    console.print(f"{len(letters)} dead letter(s)")
    if unreadable := dead_letters.unreadable():
        console.print(
            f"[red]{len(unreadable)} file(s) in {folder} do not hold a dead letter[/red]: {', '.join(unreadable)}"
        )
        raise typer.Exit(1)


@dead_letters_app.command("replay")
def replay(
    target: TargetOption,
    dicomweb_key: DicomwebKeyOption,
    delivery_id: Annotated[str | None, typer.Argument(help="one delivery id (see `dead-letters list`)")] = None,
    all_: Annotated[bool, typer.Option("--all", help="replay every dead letter")] = False,
    state_dir: StateDirOption = Path("imx-gateway-state"),
    partner: Annotated[str | None, typer.Option(envvar="IMX_GATEWAY_PARTNER", help="partner id (for receipts)")] = None,
    bootstrap: Annotated[
        str | None, typer.Option(envvar="IMX_GATEWAY_BOOTSTRAP", help="Kafka listener, to report receipts")
    ] = None,
    username: UsernameOption = None,
    password: PasswordOption = None,
    security_protocol: ProtocolOption = SecurityProtocol.SASL_PLAINTEXT,
    ssl_cafile: CaFileOption = None,
    no_receipts: Annotated[
        bool,
        typer.Option(
            "--no-receipts",
            help="store without reporting to the exchange (it then keeps their objects and shows them dead-lettered)",
        ),
    ] = False,
) -> None:
    """Fetch and store dead letters again; each one stored is removed. A STORED receipt is reported for
    each (--partner, --bootstrap and the sign-in), so the exchange learns it arrived; --no-receipts
    stores without telling it."""
    from kafka.errors import KafkaError

    from services.common.events import now_ms
    from services.gateway.records import safe_delivery_id
    from services.gateway.runner import replay_dead_letters
    from services.gateway.worker import GatewayStopped, state_paths

    if bool(delivery_id) == all_:
        console.print("[red]give one delivery id or --all[/red]")
        raise typer.Exit(2)
    if delivery_id:
        try:
            safe_delivery_id(delivery_id)
        except ValueError:
            console.print("[red]not a delivery id[/red]: `imx gateway dead-letters list` shows them")
            raise typer.Exit(2) from None
    if not (folder := state_paths(state_dir)[2]).is_dir():  # a mistyped --state-dir is not made here
        console.print(f"[red]no dead letters (no folder {folder})[/red]: is --state-dir the gateway's?")
        raise typer.Exit(2)
    if not no_receipts and not (partner and bootstrap):
        # Stored but never reported, a delivery stays owed at the exchange (its objects kept for ever)
        # and dead-lettered in the audit trail: that is a choice to make, not a default.
        console.print(
            "[red]give --partner and --bootstrap[/red] (and the sign-in) so the exchange learns each stored "
            "instance arrived, or --no-receipts to store them without telling it (it then keeps their "
            "objects and shows them dead-lettered)"
        )
        raise typer.Exit(2)
    publish = not no_receipts
    settings = _settings(
        partner or "replay",
        target,
        bootstrap or "",
        username,
        password,
        security_protocol,
        dicomweb_key,
        state_dir,
        ssl_cafile=ssl_cafile,
    )
    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)
    try:
        outcomes = replay_dead_letters(settings, None if all_ else [str(delivery_id)], publish, now_ms)
    except GatewayStopped as error:
        console.print(f"[red]replay stopped[/red]: {error}")
        raise typer.Exit(1) from None
    except KafkaError as error:
        raise _sign_in_failed(str(bootstrap), error) from None
    for outcome in outcomes:
        console.print(f"{outcome.delivery_id}  {'stored' if outcome.ok else 'failed'}  {outcome.status}")
    stored = sum(o.ok for o in outcomes)
    console.print(f"{stored} of {len(outcomes)} stored" + ("" if publish else " (not reported: --no-receipts)"))
    if stored < len(outcomes):
        raise typer.Exit(1)
