"""Ids that become topic names, database keys and log fields: a trailing newline is not part of the
alphabet. Python's `$` also matches before a final "\\n", so "acme\\n" passed every check and was stored:
an administrator token named "eve\\n" listed as "eve", could not be removed by that name, and kept working."""

from __future__ import annotations

from unittest.mock import MagicMock

import pytest

from services.audit.analysts import Analyst, AnalystStore
from services.common.control_tokens import TokenStore
from services.common.stores.organisations import Organisation, validate_organisation
from services.common.topics import Topics, validate_new_partner_id, validate_partner_id
from services.routing.rules import Route, validate_route

TRAILING = "acme\n"


def test_partner_org_and_route_ids_refuse_a_trailing_newline() -> None:
    assert validate_partner_id("acme") == "acme"
    with pytest.raises(ValueError):
        validate_partner_id(TRAILING)
    with pytest.raises(ValueError):
        validate_organisation(Organisation(TRAILING))
    with pytest.raises(ValueError):
        validate_organisation(Organisation("acme", ae_titles=("PACS\n",)))
    with pytest.raises(ValueError):
        validate_route(Route(TRAILING, "acme"))
    with pytest.raises(ValueError):
        validate_route(Route("r1", TRAILING))


def test_analyst_ids_and_token_names_refuse_a_trailing_newline() -> None:
    db = MagicMock()  # refused before the database is touched
    with pytest.raises(ValueError):
        AnalystStore(db).add(Analyst(TRAILING))
    with pytest.raises(ValueError):
        TokenStore(db).add("eve\n", "administrator")
    collection = db.__getitem__.return_value
    for write in ("insert_one", "replace_one", "update_one", "delete_one", "delete_many"):
        assert not getattr(collection, write).called, write


def test_a_long_value_is_not_echoed_whole_in_a_refusal() -> None:
    """A 100 kB id echoed into a gRPC status made its metadata too large: the caller got
    RESOURCE_EXHAUSTED instead of the reason."""
    from services.common.messages import shown

    assert shown("acme") == "'acme'"
    long = "x" * 100_000
    with pytest.raises(ValueError) as refused:
        validate_partner_id(long)
    assert len(str(refused.value)) < 300 and "(100000 characters)" in str(refused.value)
    assert len(shown(long)) < 100


@pytest.mark.parametrize("reserved", ["imx-delivery", "imx-central-gateway", "imx", "imxlab", "admin"])
def test_a_new_partner_id_may_not_be_the_systems_own_kafka_user_or_group_prefix(reserved: str) -> None:
    """A partner id is its Kafka user and its groups' prefix: "imx-delivery" took delivery's password and
    ACLs, "imx-central-gateway" every partner's central-gateway group, "admin" the devstack's super user.
    One given before the rule stays usable: its topics, deliveries and gateway go on."""
    with pytest.raises(ValueError, match="begin 'imx'"):
        validate_new_partner_id(reserved)
    assert validate_partner_id(reserved) == reserved
    assert Topics().partner(reserved) == f"imx.partner.{reserved}.v1"


@pytest.mark.parametrize("allowed", ["administration", "adminlab", "lab-imx", "x-imx"])
def test_names_that_only_contain_the_reserved_ones_are_partner_ids(allowed: str) -> None:
    assert validate_new_partner_id(allowed) == allowed
