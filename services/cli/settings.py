"""Where the CLI finds the running services (defaults: the ports `make run` uses)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class CliSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="IMX_", extra="ignore")

    ingest_grpc: str = Field("127.0.0.1:15051", description="ingest's gRPC address (organisations)")
    routing_grpc: str = Field("127.0.0.1:15052", description="routing's gRPC address (routes)")
    deid_grpc: str = Field("127.0.0.1:15053", description="deid's gRPC address")
    delivery_grpc: str = Field("127.0.0.1:15054", description="delivery's gRPC address (partners)")
    audit_grpc: str = Field("127.0.0.1:15055", description="audit's gRPC address")
    gateways_grpc: str = Field("127.0.0.1:15056", description="the central gateways' gRPC address")
    audit_url: str = Field("http://127.0.0.1:8045", description="audit's HTTP API")
    audit_api_key: str = Field("", description="an analyst's key for the audit API (`imx analysts add`)")
    stow_url: str = Field("http://127.0.0.1:8041/dicomweb", description="ingest's DICOMweb base URL")
    dicom_host: str = Field("127.0.0.1", description="ingest's C-STORE SCP host")
    dicom_port: int = Field(11112, description="ingest's C-STORE SCP port")
    dicom_ae_title: str = Field("IMX", description="ingest's AE title")
