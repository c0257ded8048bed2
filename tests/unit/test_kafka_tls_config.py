"""The CA that verifies the brokers reaches every Kafka client over TLS (services, the set-up command and
the gateways): kafka-python otherwise trusts the system's CAs only, so a cluster with its own CA (Strimzi's
by default) refused every service, the set-up Job and each partner's gateway."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.common.service_access import kafka_client_config
from services.common.settings import ServiceSettings
from services.gateway.runner import KafkaSignIn


def _settings(protocol: str, cafile: Path | None) -> ServiceSettings:
    return ServiceSettings(
        kafka_security_protocol=protocol,
        kafka_sasl_username="imx-routing",
        kafka_sasl_password="pw",  # type: ignore[arg-type]  # pydantic makes it a SecretStr
        kafka_ssl_cafile=cafile,
    )


def test_the_ca_file_goes_with_every_protocol_over_tls_and_with_no_other(tmp_path: Path) -> None:
    ca = tmp_path / "ca.crt"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    assert kafka_client_config(_settings("SASL_SSL", ca))["ssl_cafile"] == str(ca)
    assert kafka_client_config(_settings("SSL", ca)) == {"security_protocol": "SSL", "ssl_cafile": str(ca)}
    assert "ssl_cafile" not in kafka_client_config(_settings("SASL_PLAINTEXT", ca))
    assert "ssl_cafile" not in kafka_client_config(_settings("SASL_SSL", None))
    partner = KafkaSignIn("kafka.example:9094", "acme", "pw", "SASL_SSL", ca).client_config()
    assert partner["ssl_cafile"] == str(ca) and partner["security_protocol"] == "SASL_SSL"


def test_a_ca_file_that_is_not_there_is_said_at_start_not_found_as_a_failed_handshake(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        kafka_client_config(_settings("SASL_SSL", tmp_path / "missing.crt"))


def test_tls_without_a_sign_in_stays_tls(tmp_path: Path) -> None:
    """`imx gateway run --security-protocol SSL` without a username connected in plain text: the protocol
    and the CA file were dropped with the absent sign-in."""
    ca = tmp_path / "ca.crt"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    assert KafkaSignIn("kafka:9093", None, None, "SSL", ca).client_config() == {
        "security_protocol": "SSL",
        "ssl_cafile": str(ca),
    }
    assert KafkaSignIn("kafka:9092", None, None, "SASL_PLAINTEXT").client_config() == {}
