from __future__ import annotations

from pydantic import Field

from services.common.settings import ServiceSettings


class DeliverySettings(ServiceSettings):
    grpc_port: int = Field(50054, ge=0, le=65535)
    partner_topic_partitions: int = Field(3, ge=1, description="partitions of each partner's topic")
    kafka_partner_bootstrap: str = Field(
        "",
        description="the broker's partner listener (SASL SCRAM) told to partners; empty: imx issues no "
        "Kafka sign-in to partners (the deployment manages partner access itself)",
    )
    kafka_partner_security_protocol: str = Field(
        "SASL_PLAINTEXT", description="what partners use on that listener: SASL_SSL in production"
    )
