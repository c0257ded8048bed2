"""Names an administrator types (organisations, partners, routes, analysts) are read by others in
listings, the audit pages and change records: bounded, and free of characters that make text read
other than it is. Before, a 100 kB name, a NUL or a U+202E (which reverses what follows it on screen)
were stored as given."""

from __future__ import annotations

from unittest.mock import MagicMock

import pytest

from services.audit.analysts import Analyst, AnalystStore
from services.common.display_names import MAX_DISPLAY_NAME, validate_display_name
from services.common.stores.organisations import MAX_AE_TITLES, Organisation, validate_organisation
from services.common.stores.partners import Partner, validate_partner
from services.routing.rules import MAX_MATCH_VALUES, Route, RouteMatch, validate_route


@pytest.mark.parametrize(
    "name", ["", "Royal Free Hospital", "Hôpital Necker - Enfants malades", "東京大学病院", "القصر العيني"]
)
def test_ordinary_names_in_any_script_are_kept(name: str) -> None:
    assert validate_display_name(name, "partner") == name


@pytest.mark.parametrize(
    ("name", "said"),
    [
        ("evil\u202egnp.exe", "U+202E, a bidirectional control, at character 5"),
        ("two\nlines", "U+000A, a control character, at character 4"),
        ("nul\x00", "U+0000, a control character, at character 4"),
        ("\x1b[31mred", "U+001B, a control character, at character 1"),
        ("isolate\u2066x", "U+2066, a bidirectional control"),
        ("para\u2029graph", "U+2029, a control character"),
    ],
)
def test_control_and_bidirectional_characters_are_refused_by_code_point(name: str, said: str) -> None:
    with pytest.raises(ValueError) as refused:
        validate_display_name(name, "partner")
    assert said in str(refused.value)
    assert name not in str(refused.value)


def test_a_long_name_is_refused_with_its_length_not_echoed() -> None:
    validate_display_name("x" * MAX_DISPLAY_NAME, "route")
    with pytest.raises(ValueError) as refused:
        validate_display_name("x" * 100_000, "route")
    assert "100000 characters long" in str(refused.value) and len(str(refused.value)) < 100


def test_every_kind_of_name_is_checked() -> None:
    bad = "a\u202eb"
    with pytest.raises(ValueError, match="organisation name"):
        validate_organisation(Organisation("acme", name=bad))
    with pytest.raises(ValueError, match="partner name"):
        validate_partner(Partner("acme", name=bad))
    with pytest.raises(ValueError, match="route name"):
        validate_route(Route("r1", "acme", name=bad))
    db = MagicMock()
    with pytest.raises(ValueError, match="analyst name"):
        AnalystStore(db).add(Analyst("ann", name=bad))
    assert not db["audit_analysts"].insert_one.called


def test_an_organisation_has_a_bounded_number_of_ae_titles() -> None:
    titles = tuple(f"AE{i}" for i in range(MAX_AE_TITLES))
    validate_organisation(Organisation("acme", ae_titles=titles))
    with pytest.raises(ValueError, match=f"{MAX_AE_TITLES + 1} AE titles given"):
        validate_organisation(Organisation("acme", ae_titles=(*titles, "ONE-MORE")))


@pytest.mark.parametrize(
    ("match", "said"),
    [
        (RouteMatch(modalities=("CT\n",)), "not a valid modality"),
        (RouteMatch(modalities=("X" * 17,)), "not a valid modality"),
        (RouteMatch(sop_class_uids=("1.2.840.10008.5.1.4.1.1.2 ",)), "not a valid SOP class UID"),
        (RouteMatch(sop_class_uids=("CT Image Storage",)), "not a valid SOP class UID"),
        (RouteMatch(source_orgs=("Royal Free",)), "not a valid source organisation"),
        (RouteMatch(modalities=("CT",) * (MAX_MATCH_VALUES + 1)), "values of modality given"),
    ],
)
def test_a_route_matches_only_values_that_could_ever_match(match: RouteMatch, said: str) -> None:
    """A value no instance can carry made a route that silently matched nothing."""
    with pytest.raises(ValueError, match=said):
        validate_route(Route("r1", "acme", match=match))


def test_a_route_with_well_formed_values_is_kept() -> None:
    # A UID with a leading-zero component is not conformant, but ingest takes it (some devices write them):
    # a route must be able to match what ingest routes.
    uids = ("1.2.840.10008.5.1.4.1.1.2", "1.2.840.113619.4.030")
    match = RouteMatch(source_orgs=("royal-free",), modalities=("CT", "mr"), sop_class_uids=uids)
    route = Route("r1", "acme", profile="research", match=match)
    assert validate_route(route) == route


def test_a_route_names_its_profile_as_profiles_are_named() -> None:
    with pytest.raises(ValueError, match="bad profile name"):
        validate_route(Route("r1", "acme", profile="Research Profile"))
