"""Profiles as documents (JSON files, MongoDB, the admin API) and back to the engine's `Profile`.

A document is the Basic Profile (PS3.15 Table E.1-1) plus options, per-tag overrides and pixel rules:

    {"name": "ai-partner",
     "options": ["retain-longitudinal-modified-dates", "clean-descriptors"],
     "overrides": {"(0008,103E)": "K"},
     "pixel_rules": [{"regions": [{"x": 0, "y": 0, "width": 512, "height": 40}], "modality": "US"}]}

Everything an administrator writes is checked here, once, and refused with a ValueError that says
what is wrong; the engine then only ever sees valid profiles. Messages quote configuration, never
values from an instance.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from pydicom.datadict import tag_for_keyword

from services.common.profile_names import validate_profile_name
from services.deid.engine import Action, Option, PixelRule, Profile, Region
from services.deid.engine.container import PIXEL_TAGS
from services.deid.engine.errors import tag_text
from services.deid.engine.raw_engine import SPECIFIC_CHARACTER_SET

_TAG = re.compile(r"\(?\s*([0-9A-Fa-f]{4})\s*,\s*([0-9A-Fa-f]{4})\s*\)?|([0-9A-Fa-f]{8})")
_FIELDS = frozenset({"name", "version", "options", "overrides", "pixel_rules"})
_RULE_FIELDS = frozenset({"regions", "manufacturer", "model", "rows", "columns", "modality"})
_REGION_FIELDS = ("x", "y", "width", "height")
_DATE_OPTIONS = frozenset({Option.RETAIN_LONGITUDINAL_FULL_DATES, Option.RETAIN_LONGITUDINAL_MODIFIED_DATES})


def option_label(option: Option) -> str:
    """The name administrators write: RETAIN_LONGITUDINAL_MODIFIED_DATES -> retain-longitudinal-modified-dates."""
    return option.name.lower().replace("_", "-")


def parse_option(text: str) -> Option:
    """An option by its label, its enum name or its Table E.1-1 column (rtn_long_modif_dates_opt)."""
    wanted = str(text).strip().lower()
    for option in Option:
        if wanted in (option_label(option), option.name.lower(), option.value):
            return option
    known = ", ".join(option_label(o) for o in Option)
    raise ValueError(f"unknown option {text!r}; known options: {known}")


def parse_tag(text: str) -> int:
    """ "(gggg,eeee)", "gggg,eeee", "ggggeeee" or a DICOM keyword ("PatientName")."""
    value = str(text).strip()
    match = _TAG.fullmatch(value)
    if match:
        tag = int(match.group(3), 16) if match.group(3) else int(match.group(1) + match.group(2), 16)
    else:
        found = tag_for_keyword(value) if value.isidentifier() else None
        if found is None:
            raise ValueError(f"bad tag {text!r}: expected (gggg,eeee) or a DICOM keyword")
        tag = int(found)
    if tag >> 16 in (0x0000, 0x0002):
        raise ValueError(f"bad tag {text!r}: command and file meta elements cannot be overridden")
    return tag


def check_before_saving(profile: Profile) -> Profile:
    """What a profile being saved may not hold, though one saved before these checks is still read (a
    route naming it would otherwise quarantine everything it matches): overrides that did nothing, or
    something different on each of the engine's two paths, and pixel regions past the image they name."""
    for tag in profile.overrides:
        where = tag_text(tag)
        if tag in PIXEL_TAGS:
            raise ValueError(f"override of {where}: pixel data are cleaned by pixel rules, not overridden")
        if tag == SPECIFIC_CHARACTER_SET:
            raise ValueError(f"override of {where}: the character set follows the values written")
        if tag >> 16 & 1 and 0x0010 <= tag & 0xFFFF <= 0x00FF:
            raise ValueError(f"override of {where}: a private creator goes with its elements (override those)")
    for r, rule in enumerate(profile.pixel_rules):
        for i, region in enumerate(rule.regions):
            if (rule.columns is not None and region.x + region.width > rule.columns) or (
                rule.rows is not None and region.y + region.height > rule.rows
            ):
                raise ValueError(
                    f"pixel_rules[{r}].regions[{i}] reaches past the rule's {rule.rows} rows x {rule.columns} columns"
                )
    return profile


def parse_action(text: str, tag: int) -> Action:
    """An action code of PS3.15 Table E.1-1a ("K", "X", "X/Z/D"...) or its name ("keep")."""
    wanted = str(text).strip()
    for action in Action:
        if wanted.upper() in (action.value, action.name):
            return action
    known = ", ".join(a.value for a in Action)
    raise ValueError(f"bad action {text!r} for {tag_text(tag)}: expected one of {known}")


def parse_options(values: Iterable[str]) -> frozenset[Option]:
    options = frozenset(parse_option(v) for v in values)
    if options >= _DATE_OPTIONS:
        labels = " and ".join(sorted(option_label(o) for o in _DATE_OPTIONS))
        raise ValueError(f"options {labels} contradict each other: choose one")
    return options


def parse_overrides(values: Mapping[str, str]) -> dict[int, Action]:
    overrides: dict[int, Action] = {}
    for text, action in values.items():
        tag = parse_tag(text)
        if tag in overrides:
            raise ValueError(f"tag {tag_text(tag)} is overridden twice")
        overrides[tag] = parse_action(action, tag)
    return overrides


def _int(value: object, what: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{what} must be an integer >= {minimum}, not {value!r}")
    return value


def _text(value: object, what: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{what} must be a non-empty string or absent")
    return value


def parse_region(doc: object, where: str) -> Region:
    if not isinstance(doc, Mapping) or set(doc) != set(_REGION_FIELDS):
        raise ValueError(f"{where} must be an object with exactly {', '.join(_REGION_FIELDS)}")
    return Region(
        x=_int(doc["x"], f"{where}.x", 0),
        y=_int(doc["y"], f"{where}.y", 0),
        width=_int(doc["width"], f"{where}.width", 1),
        height=_int(doc["height"], f"{where}.height", 1),
    )


def parse_pixel_rule(doc: object, where: str) -> PixelRule:
    if not isinstance(doc, Mapping):
        raise ValueError(f"{where} must be an object")
    unknown = set(doc) - _RULE_FIELDS
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    regions = doc.get("regions")
    if not isinstance(regions, list) or not regions:
        raise ValueError(f"{where}.regions must list at least one region")
    return PixelRule(
        regions=tuple(parse_region(r, f"{where}.regions[{i}]") for i, r in enumerate(regions)),
        manufacturer=_text(doc.get("manufacturer"), f"{where}.manufacturer"),
        model=_text(doc.get("model"), f"{where}.model"),
        rows=None if doc.get("rows") is None else _int(doc["rows"], f"{where}.rows", 1),
        columns=None if doc.get("columns") is None else _int(doc["columns"], f"{where}.columns", 1),
        modality=_text(doc.get("modality"), f"{where}.modality"),
    )


def profile_from_document(doc: Mapping[str, Any], version: int = 1) -> Profile:
    """A validated Profile; `version` applies unless the document carries one. ValueError if invalid."""
    if not isinstance(doc, Mapping):
        raise ValueError("a profile must be a JSON object")
    unknown = set(doc) - _FIELDS
    if unknown:
        raise ValueError(f"unknown profile field(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(_FIELDS))}")
    name = validate_profile_name(doc.get("name"))
    options = doc.get("options") or []
    overrides = doc.get("overrides") or {}
    rules = doc.get("pixel_rules") or []
    if not isinstance(options, list) or not all(isinstance(o, str) for o in options):
        raise ValueError("options must be a list of option names")
    if not isinstance(overrides, Mapping):
        raise ValueError('overrides must be an object: {"(gggg,eeee)": "K", ...}')
    if not isinstance(rules, list):
        raise ValueError("pixel_rules must be a list")
    return Profile(
        name=name,
        version=str(_int(doc.get("version", version), "version", 1)),
        options=parse_options(options),
        overrides=parse_overrides(overrides),
        pixel_rules=tuple(parse_pixel_rule(r, f"pixel_rules[{i}]") for i, r in enumerate(rules)),
    )


def profile_to_document(profile: Profile) -> dict[str, Any]:
    """The document form (canonical: sorted options, upper-case tags); `profile_from_document` inverts it."""
    return {
        "name": profile.name,
        "version": profile_version_number(profile),
        "options": sorted(option_label(o) for o in profile.options),
        "overrides": {tag_text(tag): action.value for tag, action in sorted(profile.overrides.items())},
        "pixel_rules": [_rule_document(rule) for rule in profile.pixel_rules],
    }


def _rule_document(rule: PixelRule) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "regions": [{"x": r.x, "y": r.y, "width": r.width, "height": r.height} for r in rule.regions]
    }
    for field in ("manufacturer", "model", "rows", "columns", "modality"):
        if getattr(rule, field) is not None:
            doc[field] = getattr(rule, field)
    return doc


def profile_version_number(profile: Profile) -> int:
    return int(profile.version) if profile.version.isdigit() else 0


def same_content(a: Profile, b: Profile) -> bool:
    """Equal apart from the version: saving `b` over `a` would change nothing."""
    left, right = profile_to_document(a), profile_to_document(b)
    left.pop("version")
    right.pop("version")
    return left == right
