"""Where an organisation's calling AE titles may call from (pure): networks as written, tidied, and an
address inside or outside them."""

from __future__ import annotations

import pytest

from services.common.ip_networks import network_of, peer_address, stored_networks
from services.common.stores.organisations import MAX_NETWORKS, CallingOrg, Organisation, validate_organisation


def test_networks_are_tidied_and_a_bare_address_is_itself() -> None:
    org = validate_organisation(Organisation("acme", dicom_from=("10.20.3.4/16", " 192.0.2.7 ", "10.20.0.0/16")))
    assert org.dicom_from == ("10.20.0.0/16", "192.0.2.7/32")


@pytest.mark.parametrize("bad", ["10.0.0.0/33", "ten.0.0.0/8", "", "10.0.0.0/8; rm"])
def test_what_is_not_a_network_is_refused_saying_what_to_give(bad: str) -> None:
    with pytest.raises(ValueError, match="not a network"):
        validate_organisation(Organisation("acme", dicom_from=(bad,)))


def test_at_most_so_many_networks() -> None:
    with pytest.raises(ValueError, match="at most"):
        validate_organisation(Organisation("acme", dicom_from=tuple(f"10.0.{i}.0/24" for i in range(MAX_NETWORKS + 1))))


def test_an_address_is_admitted_only_from_the_networks_and_anywhere_without_any() -> None:
    site = CallingOrg("acme", (network_of("10.20.0.0/16"), network_of("2001:db8::/32")))
    assert site.admits("10.20.9.9") and site.admits("2001:db8::1")
    assert site.admits("::ffff:10.20.9.9"), "an IPv4 peer on a dual-stack socket"
    copied = CallingOrg("acme", (network_of("::ffff:10.20.9.9"),))  # as the refusal's log names a peer
    assert copied.networks == (network_of("10.20.9.9"),) and copied.admits("10.20.9.9")
    assert copied.admits("::ffff:10.20.9.9") and peer_address("::ffff:10.20.9.9") == "10.20.9.9"
    assert not site.admits("10.21.0.1") and not site.admits("127.0.0.1") and not site.admits("not-an-address")
    assert CallingOrg("acme").admits("203.0.113.5")


def test_networks_stored_unreadable_admit_nobody_never_everybody() -> None:
    assert stored_networks([]) == ()
    assert stored_networks(["10.0.0.0/8", "garbage"]) == (network_of("10.0.0.0/8"),)
    nobody = CallingOrg("acme", stored_networks(["garbage"]))
    assert not nobody.admits("127.0.0.1") and not nobody.admits("10.1.2.3")
