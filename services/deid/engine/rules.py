"""Compile Table E.1-1, a set of options and a profile's overrides into one lookup per tag.

Compilation happens once per profile; the per-instance cost of a rule is one dict lookup.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from .actions import Action, Option
from .table import ConfidentialityTable, Pattern, SafePrivate, TableRow

# Data Set Trailing Padding (PS3.5 7.7) is not in Table E.1-1; it is removed because its bytes are
# arbitrary and may hold remnants of earlier content.
TRAILING_PADDING = 0xFFFCFFFC

# Attributes Table E.1-1 (2026c) does not list but that name the issuing organisation of an identifier
# the table removes: Issuer of Accession Number Sequence (0008,0051) carries the same namespace as Issuer
# of Patient ID (0010,0021, X). When in doubt the safer action: removed unless institution identity is
# retained. Found by the end-to-end PHI scan, which seeds the sender's namespace in both places.
SUPPLEMENTARY_ISSUERS = (
    0x00080051,
    0x00100024,  # Issuer of Patient ID Qualifiers Sequence: the patient ID's namespace, as (0010,0021)
    0x00400026,  # Order Placer Identifier Sequence: the requesting organisation's namespace
    0x00400027,  # Order Filler Identifier Sequence
)
# Identifying attributes the table does not list, kept verbatim under every profile before (a read-only
# review, 2026-12-07): the birth and death dates in an alternative calendar (the Gregorian birth date is
# Z), the retired order numbers (their successors (0040,2016/2017) are Z) and the free text of the
# scheduled procedure step's comments. Removed under every profile.
SUPPLEMENTARY_IDENTIFYING = (
    0x00100033,  # Patient's Birth Date in Alternative Calendar
    0x00100034,  # Patient's Death Date in Alternative Calendar
    0x00401006,  # Placer Order Number / Procedure (retired)
    0x00401007,  # Filler Order Number / Procedure (retired)
    0x00402006,  # Placer Order Number / Imaging Service Request (retired)
    0x00402007,  # Filler Order Number / Imaging Service Request (retired)
    0x00400400,  # Comments on the Scheduled Procedure Step
)
# A structured report's content tree (Content Sequence, (0040,A730): D, or C with Clean Structured Content)
# holds free text the table does not list: a TEXT item's Text Value (0040,A160) was kept under every
# profile ("Discussed with Dr ..., wife informed by phone ..."). The engine cannot make a dummy report, so
# D empties the tree; with the option the tree is kept and its free text emptied (C on UT); its Person
# Name (0040,A123) is the table's own D. A Text Value outside the tree (in a protocol's context
# sequence) is removed without the option: emptying the tree did not reach it.
CONTENT_SEQUENCE, TEXT_VALUE = 0x0040A730, 0x0040A160


def resolve_row(row: TableRow, options: Iterable[Option]) -> Action:
    """The action for one row under a set of options.

    When two selected options disagree (Retain Device Identity says K for a calibration date,
    Retain Longitudinal Modified Dates says C), the more protective C wins: PS3.15 E.3 does not
    rank options, and cleaning keeps the attribute while still protecting it.
    """
    chosen = [row.options[option] for option in options if option in row.options]
    if not chosen:
        return row.basic
    return Action.CLEAN if Action.CLEAN in chosen else chosen[0]


@dataclass(frozen=True)
class RuleSet:
    """Every decision the transform needs, precompiled for one profile."""

    exact: Mapping[int, Action]
    curves: Action
    overlay_data: Action
    overlay_comments: Action
    private: Action  # X (remove all) or C (keep Table E.3.10-1 safe elements)
    safe_private: SafePrivate
    options: frozenset[Option]

    @property
    def retain_uids(self) -> bool:
        return Option.RETAIN_UIDS in self.options

    @property
    def shift_dates(self) -> bool:
        return Option.RETAIN_LONGITUDINAL_MODIFIED_DATES in self.options

    def action_for(self, tag: int) -> Action | None:
        """The table's action for a standard (even group) tag, or None when the table is silent."""
        action = self.exact.get(tag)
        if action is not None:
            return action
        group = tag >> 16
        if group & 1 or not 0x5000 <= group <= 0x60FF:
            return None
        if group <= 0x50FF:
            return self.curves
        if group >= 0x6000:
            element = tag & 0xFFFF
            if element == 0x3000:
                return self.overlay_data
            if element == 0x4000:
                return self.overlay_comments
            if self.overlay_data is Action.REMOVE:
                # The Overlay Plane Module is invalid without Overlay Data (PS3.3 C.9.2, Type 1):
                # removing the data removes the whole repeating group.
                return Action.REMOVE
        return None


def compile_rules(
    table: ConfidentialityTable,
    safe_private: SafePrivate,
    options: frozenset[Option],
    overrides: Mapping[int, Action],
) -> RuleSet:
    exact: dict[int, Action] = {}
    for tag, row in table.by_tag().items():
        exact[tag] = resolve_row(row, options)
    exact[TRAILING_PADDING] = Action.REMOVE
    if Option.RETAIN_INSTITUTION_IDENTITY not in options:
        for tag in SUPPLEMENTARY_ISSUERS:
            exact.setdefault(tag, Action.REMOVE)
    if exact.get(CONTENT_SEQUENCE) is Action.DUMMY:
        exact[CONTENT_SEQUENCE] = Action.ZERO
    for tag in SUPPLEMENTARY_IDENTIFYING:
        exact.setdefault(tag, Action.REMOVE)
    exact.setdefault(TEXT_VALUE, Action.CLEAN if Option.CLEAN_STRUCTURED_CONTENT in options else Action.REMOVE)
    patterns = {pattern: resolve_row(row, options) for pattern, row in table.by_pattern().items()}
    exact.update(overrides)
    return RuleSet(
        exact=MappingProxyType(exact),
        # Curve and overlay bitmaps cannot be read for text here, so "clean" means remove them
        # (PS3.15 E.3.3 allows removal as a form of cleaning).
        curves=_bitmap_action(patterns[Pattern.CURVE]),
        overlay_data=_bitmap_action(patterns[Pattern.OVERLAY_DATA]),
        overlay_comments=patterns[Pattern.OVERLAY_COMMENTS],
        private=patterns[Pattern.PRIVATE],
        safe_private=safe_private,
        options=options,
    )


def _bitmap_action(action: Action) -> Action:
    return Action.REMOVE if action is Action.CLEAN else action
