from __future__ import annotations

from pydantic import Field

from services.common.settings import ServiceSettings


class RoutingSettings(ServiceSettings):
    grpc_port: int = Field(15052, ge=0, le=65535)
    routes_refresh_s: float = Field(2.0, gt=0, description="how often route changes are looked for")
