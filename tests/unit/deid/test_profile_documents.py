"""Profiles as documents: what administrators write is validated once, and round-trips exactly."""

from __future__ import annotations

import pytest

from services.deid.engine import BUILTIN_PROFILES, Action, Option, PixelRule, Profile, Region
from services.deid.profile_documents import (
    option_label,
    parse_option,
    parse_tag,
    profile_from_document,
    profile_to_document,
    same_content,
)

RULE = PixelRule(
    regions=(Region(0, 0, 512, 40), Region(400, 480, 112, 32)), manufacturer="ACME", modality="US", rows=512
)
REGION = {"x": 0, "y": 0, "width": 5, "height": 5}
PROFILE = Profile(
    name="ai-partner",
    version="3",
    options=frozenset({Option.RETAIN_LONGITUDINAL_MODIFIED_DATES, Option.CLEAN_DESCRIPTORS}),
    overrides={0x0008103E: Action.KEEP, 0x00091010: Action.REMOVE},
    pixel_rules=(RULE,),
)


def test_a_profile_round_trips_through_its_document() -> None:
    doc = profile_to_document(PROFILE)
    assert doc == {
        "name": "ai-partner",
        "version": 3,
        "options": ["clean-descriptors", "retain-longitudinal-modified-dates"],
        "overrides": {"(0008,103E)": "K", "(0009,1010)": "X"},
        "pixel_rules": [
            {
                "regions": [
                    {"x": 0, "y": 0, "width": 512, "height": 40},
                    {"x": 400, "y": 480, "width": 112, "height": 32},
                ],
                "manufacturer": "ACME",
                "rows": 512,
                "modality": "US",
            }
        ],
    }
    back = profile_from_document(doc)
    assert (back.name, back.version, back.options, dict(back.overrides), back.pixel_rules) == (
        PROFILE.name,
        PROFILE.version,
        PROFILE.options,
        dict(PROFILE.overrides),
        PROFILE.pixel_rules,
    )


@pytest.mark.parametrize("name", sorted(BUILTIN_PROFILES))
def test_builtin_profiles_round_trip(name: str) -> None:
    builtin = BUILTIN_PROFILES[name]
    assert same_content(profile_from_document(profile_to_document(builtin)), builtin)


def test_a_minimal_document_is_the_basic_profile_at_the_given_version() -> None:
    profile = profile_from_document({"name": "plain"}, version=4)
    assert profile.version == "4"
    assert (profile.options, dict(profile.overrides), profile.pixel_rules) == (frozenset(), {}, ())


@pytest.mark.parametrize("text", ["retain-uids", "RETAIN_UIDS", "rtn_uids_opt", " Retain-UIDs "])
def test_options_are_accepted_by_label_name_or_table_column(text: str) -> None:
    assert parse_option(text) is Option.RETAIN_UIDS
    assert option_label(Option.RETAIN_UIDS) == "retain-uids"


@pytest.mark.parametrize("text", ["(0010,0010)", "(0010, 0010)", "0010,0010", "00100010", "PatientName"])
def test_tags_are_accepted_in_the_standard_notation_or_by_keyword(text: str) -> None:
    assert parse_tag(text) == 0x00100010


def test_overrides_accept_action_codes_and_names_and_keep_private_block_bytes() -> None:
    profile = profile_from_document(
        {"name": "p", "overrides": {"(0019,1010)": "keep", "(0008,0080)": "x/z/d", "StudyDescription": "C"}}
    )
    assert dict(profile.overrides) == {
        0x00191010: Action.KEEP,
        0x00080080: Action.REMOVE_ZERO_OR_DUMMY,
        0x00081030: Action.CLEAN,
    }


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"name": "p", "options": ["retain-everything"]}, "unknown option 'retain-everything'"),
        ({"name": "p", "overrides": {"(0010,001G)": "K"}}, "bad tag '(0010,001G)'"),
        ({"name": "p", "overrides": {"NotAKeyword": "K"}}, "bad tag 'NotAKeyword'"),
        ({"name": "p", "overrides": {"(0002,0013)": "K"}}, "file meta"),
        ({"name": "p", "overrides": {"(0010,0010)": "Q"}}, "bad action 'Q' for (0010,0010)"),
        ({"name": "p", "overrides": {"PatientName": "K", "(0010,0010)": "X"}}, "overridden twice"),
        (
            {"name": "p", "options": ["retain-longitudinal-full-dates", "rtn_long_modif_dates_opt"]},
            "contradict each other",
        ),
        ({"name": "Bad Name"}, "bad profile name"),
        ({"options": []}, "bad profile name"),
        ({"name": "p", "colour": "blue"}, "unknown profile field(s) colour"),
        ({"name": "p", "overrides": ["(0010,0010)=K"]}, "overrides must be an object"),
        ({"name": "p", "options": "retain-uids"}, "options must be a list"),
        ({"name": "p", "pixel_rules": [{"regions": []}]}, "pixel_rules[0].regions must list at least one region"),
        ({"name": "p", "pixel_rules": [{"regions": [{"x": 0, "y": 0, "width": 0, "height": 5}]}]}, "width"),
        ({"name": "p", "pixel_rules": [{"regions": [{"x": -1, "y": 0, "width": 5, "height": 5}]}]}, "x must be"),
        ({"name": "p", "pixel_rules": [{"regions": [{"x": 0, "y": 0, "w": 5, "h": 5}]}]}, "exactly x, y"),
        ({"name": "p", "pixel_rules": [{"regions": [REGION], "size": 1}]}, "unknown field(s) size"),
        ({"name": "p", "pixel_rules": [{"regions": [REGION], "rows": "512"}]}, "pixel_rules[0].rows must be"),
    ],
)
def test_invalid_documents_are_refused_with_a_clear_message(doc: dict, message: str) -> None:
    with pytest.raises(ValueError) as raised:
        profile_from_document(doc)
    assert message in str(raised.value)


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"name": "p", "overrides": {"PixelData": "X"}}, "pixel rules"),
        ({"name": "p", "overrides": {"SpecificCharacterSet": "X"}}, "character set"),
        ({"name": "p", "overrides": {"(0029,0010)": "K"}}, "private creator"),
        (
            {
                "name": "p",
                "pixel_rules": [{"rows": 16, "columns": 16, "regions": [{"x": 8, "y": 0, "width": 9, "height": 2}]}],
            },
            "regions[0] reaches past",
        ),
    ],
)
def test_what_did_nothing_is_refused_when_saved_and_still_read_when_stored(doc: dict, message: str) -> None:
    """Overrides that did nothing (or something different on each engine path), and pixel regions past
    the image: refused for a profile being saved. A profile stored before is still read: refused on
    reading, every route naming it quarantined what it matched."""
    from services.deid.profile_documents import check_before_saving

    stored = profile_from_document(doc)
    with pytest.raises(ValueError) as raised:
        check_before_saving(stored)
    assert message in str(raised.value)


def test_same_content_ignores_the_version_only() -> None:
    other_version = profile_from_document({**profile_to_document(PROFILE), "version": 9})
    assert same_content(PROFILE, other_version)
    assert not same_content(PROFILE, PROFILE.with_options(Option.RETAIN_UIDS))
