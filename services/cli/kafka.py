"""`imx kafka setup-services`: the services' Kafka users, passwords and ACLs, as the broker's admin.

The declaration is services/common/service_access.py, the same one `make up` applies
(tools/services_stack.py); the compose file's `kafka-setup` container and the Helm chart's hook Job run
this command. It signs in with the process settings every service reads (IMX_KAFKA_BOOTSTRAP,
IMX_KAFKA_SECURITY_PROTOCOL, IMX_KAFKA_SASL_MECHANISM, IMX_KAFKA_SASL_USERNAME,
IMX_KAFKA_SASL_PASSWORD_FILE), here naming the admin, who may alter users and ACLs. Each service's
password is a file named after the service in `--passwords-dir` (a mounted Secret); passwords are never
printed. Running it again changes nothing but passwords that changed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

console = Console()
kafka_app = typer.Typer(help="Kafka access of the imx services (users and ACLs).", no_args_is_help=True)


def read_passwords(folder: Path, services: list[str]) -> dict[str, str]:
    """{service: password} from `folder/<service>`; without `services`, every declared service that has a
    file there (a mounted Secret's folder also holds Kubernetes' own `..data` entries, which are skipped)."""
    from services.common.service_access import SERVICES

    unknown = sorted(set(services) - set(SERVICES))
    if unknown:
        raise ValueError(f"unknown service {', '.join(unknown)} (known: {', '.join(SERVICES)})")
    wanted = services or [name for name in SERVICES if (folder / name).is_file()]
    if not wanted:
        raise ValueError(f"no password file for any service in {folder} (files named {', '.join(SERVICES)})")
    passwords = {}
    for name in wanted:
        path = folder / name
        if not path.is_file():
            raise ValueError(f"no password file for {name}: {path}")
        password = path.read_text().strip()
        if not password:
            raise ValueError(f"the password file for {name} is empty: {path}")
        passwords[name] = password
    return passwords


@kafka_app.command("setup-services")
def setup_services(
    passwords_dir: Annotated[
        Path,
        typer.Option(
            envvar="IMX_KAFKA_SERVICE_PASSWORDS_DIR",
            help="folder with one file per service, named after it (ingest, routing...), holding its password",
        ),
    ],
    service: Annotated[
        list[str] | None,
        typer.Option("--service", help="a service to set up (repeat); default: every one with a file in the folder"),
    ] = None,
    create_topics: Annotated[
        bool,
        typer.Option(
            help="create the pipeline's missing topics too (IMX_TOPIC_PARTITIONS partitions), and set the dead "
            "letters' retention (IMX_DEAD_LETTER_RETENTION_DAYS) on their topic"
        ),
    ] = True,
    wait: Annotated[
        float,
        typer.Option(min=1, help="seconds to wait for a broker that does not answer (still starting) before failing"),
    ] = 300.0,
) -> None:
    """Create or update each service's SCRAM user (imx-<service>; SHA-512 and SHA-256) and exactly its ACLs."""
    from kafka.errors import KafkaError

    from services.common.service_access import ServiceAccess, kafka_client_config, service_acls, username
    from services.common.settings import ServiceSettings, retention_ms
    from services.common.topics import Topics

    settings = ServiceSettings()
    try:
        passwords = read_passwords(passwords_dir, list(service or []))
        admin = kafka_client_config(settings)
    except (ValueError, OSError) as error:
        console.print(f"[red]{error}[/red]")
        raise typer.Exit(2) from None
    topics = Topics(settings.topic_prefix)
    try:
        ServiceAccess(settings.kafka_bootstrap, admin).apply(
            passwords,
            topics,
            settings.topic_partitions if create_topics else None,
            replication_factor=settings.topic_replication_factor,
            wait_s=wait,
            dead_letter_retention_ms=retention_ms(settings.dead_letter_retention_days),
        )
    except (KafkaError, RuntimeError, OSError, ValueError) as error:
        console.print(f"[red]setting up the services' Kafka access failed[/red] ({type(error).__name__}): {error}")
        raise typer.Exit(1) from None
    table = Table("service", "Kafka user", "ACLs")
    for name in passwords:
        table.add_row(name, username(name), str(len(service_acls(name, topics))))
    console.print(table)
