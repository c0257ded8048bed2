"""`host:port` for gRPC and base URLs, IPv6 in brackets (services/common/listen_address.py)."""

from __future__ import annotations

import pytest

from services.common.listen_address import bare_host, host_port, is_ipv6


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("0.0.0.0", "0.0.0.0:15051"),
        ("::", "[::]:15051"),
        ("[::]", "[::]:15051"),
        ("fd00::7", "[fd00::7]:15051"),
        ("imx-ingest.imx.svc", "imx-ingest.imx.svc:15051"),
    ],
)
def test_host_port_brackets_ipv6_only(host: str, expected: str) -> None:
    assert host_port(host, 15051) == expected


def test_bare_host_and_family() -> None:
    assert bare_host("[::1]") == "::1" and is_ipv6("[::1]") and is_ipv6("::")
    assert not is_ipv6("127.0.0.1") and not is_ipv6("localhost")


def test_delivery_base_url_brackets_an_ipv6_host() -> None:
    from services.delivery.settings import DeliverySettings

    assert DeliverySettings(http_host="::", http_port=8046).dicomweb_base() == "http://[::]:8046/dicomweb"
