from __future__ import annotations

from pydantic import Field

from services.common.settings import ServiceSettings


class DeliverySettings(ServiceSettings):
    grpc_port: int = Field(50054, ge=0, le=65535)
    partner_topic_partitions: int = Field(3, ge=1, description="partitions of each partner's topic")
