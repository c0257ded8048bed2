"""Where a server listens, for IPv4 and IPv6 alike: the chart's `bindAddress` is "0.0.0.0" by default and
"::" on IPv6-only clusters, and a bare IPv6 address cannot be pasted into "host:port" (gRPC read ":::15051"
as a malformed name) nor bound by a socket made for IPv4 (the HTTP servers' `socket.create_server`)."""

from __future__ import annotations

import socket


def bare_host(host: str) -> str:
    """`host` without the brackets an IPv6 address may be written with ("[::]" is "::")."""
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def is_ipv6(host: str) -> bool:
    return ":" in bare_host(host)


def host_port(host: str, port: int) -> str:
    """ "host:port", an IPv6 address in brackets: "[::]:15051", "0.0.0.0:15051"."""
    bare = bare_host(host)
    return f"[{bare}]:{port}" if is_ipv6(bare) else f"{bare}:{port}"


def listening_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to `host` and listening; "::" also takes IPv4 where the system allows it (the
    pod's own IPv4 address on a dual-stack cluster)."""
    bare = bare_host(host)
    if not is_ipv6(bare):
        return socket.create_server((bare, port), reuse_port=False)
    dual = bare == "::" and socket.has_dualstack_ipv6()
    return socket.create_server((bare, port), family=socket.AF_INET6, dualstack_ipv6=dual, reuse_port=False)
