"""IP networks as operators write them (CIDR, or a bare address) and peers' addresses as sockets give
them (pure): what binds an organisation's calling AE titles to its sites (stores/organisations.py)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from services.common.messages import shown

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def network_of(text: str) -> Network:
    """A CIDR network as written (host bits allowed: 10.1.2.3/16 is 10.1.0.0/16); a bare address is itself;
    an IPv4-mapped one (::ffff:10.1.2.3, as a dual-stack socket names an IPv4 peer) is the IPv4 network."""
    try:
        network = ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise ValueError(f"{shown(text)} is not a network (CIDR, e.g. 10.20.0.0/16, or an address)") from None
    mapped = network.network_address.ipv4_mapped if isinstance(network, ipaddress.IPv6Network) else None
    if mapped is not None and network.prefixlen >= 96:
        return ipaddress.IPv4Network((mapped, network.prefixlen - 96))
    return network


# No peer has this address: what a stored list of networks none of which can be read admits.
_NOWHERE = ipaddress.IPv4Network("0.0.0.0/32")


def stored_networks(texts: Iterable[str]) -> tuple[Network, ...]:
    """The networks as stored. One that cannot be read (edited in the database by hand) is left out, and
    a list of which none can be read admits nobody, never everybody; raising instead stopped every
    refresh of the calling AE titles, and an ingest started then refused every C-STORE."""
    texts = list(texts)
    networks = []
    for text in texts:
        try:
            networks.append(network_of(text))
        except ValueError:
            continue
    return tuple(networks) or ((_NOWHERE,) if texts else ())


def peer_address(address: str) -> str:
    """A peer's address as an operator would write it: an IPv4 peer of a dual-stack socket as IPv4."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    return str(mapped or ip)
