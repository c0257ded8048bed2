from __future__ import annotations

from pydantic import Field

from services.common.settings import ServiceSettings


class DeidSettings(ServiceSettings):
    grpc_port: int = Field(50053, ge=0, le=65535)
