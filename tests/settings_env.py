"""The environment variables each service reads, from its settings class: deployment files (the Helm
chart, docker-compose.yml) are checked against these, so a misspelt variable, which pydantic-settings
would silently ignore, fails a test instead."""

from __future__ import annotations

from pydantic import AliasChoices
from pydantic_settings import BaseSettings

from services.audit.settings import AuditSettings
from services.deid.settings import DeidSettings
from services.delivery.settings import DeliverySettings
from services.ingest.settings import IngestSettings
from services.routing.settings import RoutingSettings

SETTINGS: dict[str, type[BaseSettings]] = {
    "ingest": IngestSettings,
    "routing": RoutingSettings,
    "deid": DeidSettings,
    "delivery": DeliverySettings,
    "audit": AuditSettings,
}

GRPC_PORTS = {"ingest": 15051, "routing": 15052, "deid": 15053, "delivery": 15054, "audit": 15055}


def env_names(service: str) -> set[str]:
    """Every variable name the service's settings accept (IMX_<FIELD>, or a field's aliases)."""
    settings = SETTINGS[service]
    prefix = str(settings.model_config.get("env_prefix", ""))
    names: set[str] = set()
    for field_name, field in settings.model_fields.items():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            names.update(choice for choice in alias.choices if isinstance(choice, str))
        elif isinstance(alias, str):
            names.add(alias)
        else:
            names.add(f"{prefix}{field_name}".upper())
    return names
