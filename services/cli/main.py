"""The `imx` command."""

from __future__ import annotations

from enum import StrEnum

import typer

from services.cli import admin, audit, blobs, dlq, files, gateway, kafka, profiles, send, status, studies, tokens

app = typer.Typer(
    help="imx: a medical-image exchange. DICOM in, routed, de-identified, delivered, audited.", no_args_is_help=True
)
app.add_typer(admin.routes_app, name="routes")
app.add_typer(admin.partners_app, name="partners")
app.add_typer(admin.orgs_app, name="orgs")
app.add_typer(admin.analysts_app, name="analysts")
app.add_typer(tokens.tokens_app, name="tokens")
app.add_typer(profiles.profiles_app, name="profiles")
app.add_typer(blobs.blobs_app, name="blobs")
app.add_typer(gateway.gateway_app, name="gateway")
app.add_typer(dlq.dlq_app, name="dlq")
app.add_typer(studies.studies_app, name="studies")
app.add_typer(audit.audit_app, name="audit")
app.add_typer(kafka.kafka_app, name="kafka")
app.command("demo-data")(files.demo_data)
app.command("deid")(files.deid)
app.command("send")(send.send)
app.command("status")(status.status)
app.command("pause")(admin.pause)
app.command("resume")(admin.resume)


class ServiceName(StrEnum):
    ingest = "ingest"
    routing = "routing"
    deid = "deid"
    delivery = "delivery"
    audit = "audit"
    gateways = "gateways"  # central gateways for partners registered with an endpoint


@app.command()
def serve(name: ServiceName) -> None:
    """Run one service in the foreground (settings from IMX_* environment variables)."""
    import importlib

    module = "services.gateway.central" if name is ServiceName.gateways else f"services.{name.value}.main"
    importlib.import_module(module).serve()


def main() -> None:
    """The `imx` command: a setting that does not parse (`IMX_DICOM_PORT=abc`) is said plainly, its variable
    and what is wrong with it, never its value (it may be a secret), not as pydantic's traceback."""
    from pydantic import ValidationError
    from rich.console import Console

    try:
        app()
    except ValidationError as error:
        console = Console(stderr=True)
        for problem in error.errors(include_input=False, include_url=False):
            name = "_".join(str(part) for part in problem["loc"]).upper()
            console.print(
                f"[red]bad setting {name if name.startswith('IMX_') else 'IMX_' + name}[/red]: {problem['msg']}"
            )
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
