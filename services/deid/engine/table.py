"""PS3.15 Table E.1-1 and Table E.3.10-1, read from the vendored CSV copies in ``services/deid/data``.

The tables are data, not code: a new edition of the standard is a new CSV, not a code change.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType

from .actions import Action, Option

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
TABLE_E1_1 = DATA_DIR / "ps3.15-table-e1-1.csv"
TABLE_E3_10_1 = DATA_DIR / "ps3.15-table-e3-10-1-safe-private.csv"

_EXACT = re.compile(r"\(([0-9A-Fa-f]{4}),([0-9A-Fa-f]{4})\)")
_SAFE_PRIVATE = re.compile(r"\(([0-9A-Fa-f]{4}),xx([0-9A-Fa-f]{2})\)")


class Pattern(StrEnum):
    """The non-literal tags of Table E.1-1."""

    CURVE = "(50xx,xxxx)"  # retired curve groups, all elements
    OVERLAY_DATA = "(60xx,3000)"
    OVERLAY_COMMENTS = "(60xx,4000)"
    PRIVATE = "(gggg,eeee) where gggg is odd"


@dataclass(frozen=True)
class TableRow:
    name: str
    tag: int | Pattern
    retired: bool
    basic: Action
    options: Mapping[Option, Action]


@dataclass(frozen=True)
class ConfidentialityTable:
    rows: tuple[TableRow, ...]

    def by_tag(self) -> dict[int, TableRow]:
        return {row.tag: row for row in self.rows if isinstance(row.tag, int)}

    def by_pattern(self) -> dict[Pattern, TableRow]:
        return {row.tag: row for row in self.rows if isinstance(row.tag, Pattern)}


def parse_tag(text: str) -> int | Pattern:
    match = _EXACT.fullmatch(text)
    if match:
        return int(match.group(1), 16) << 16 | int(match.group(2), 16)
    return Pattern(text)


def load_table(path: Path = TABLE_E1_1) -> ConfidentialityTable:
    """Parse Table E.1-1: one row per attribute, the Basic Profile action and each option's action."""
    rows = []
    with path.open(newline="", encoding="utf-8") as handle:
        for record in csv.DictReader(handle):
            options = {option: Action(record[option.value]) for option in Option if record[option.value].strip()}
            rows.append(
                TableRow(
                    name=record["name"],
                    tag=parse_tag(record["tag"]),
                    retired=record["retired"] == "Y",
                    basic=Action(record["basic_profile"]),
                    options=MappingProxyType(options),
                )
            )
    return ConfidentialityTable(tuple(rows))


@dataclass(frozen=True)
class SafePrivate:
    """Table E.3.10-1: private elements known to be safe, keyed by (group, creator, element byte), with the
    VR the table gives each."""

    entries: Mapping[tuple[int, str, int], str]

    def is_safe(self, group: int, creator: str, element_byte: int) -> bool:
        return (group, creator, element_byte) in self.entries

    def vr(self, group: int, creator: str, element_byte: int) -> str | None:
        """The table's VR of a safe element (None: not in the table)."""
        return self.entries.get((group, creator, element_byte))


def load_safe_private(path: Path = TABLE_E3_10_1) -> SafePrivate:
    entries: dict[tuple[int, str, int], str] = {}
    with path.open(newline="", encoding="utf-8") as handle:
        for record in csv.DictReader(handle):
            match = _SAFE_PRIVATE.fullmatch(record["data_element"].strip())
            if match is None:
                raise ValueError(f"unrecognised private tag pattern in {path.name}")
            group, element = int(match.group(1), 16), int(match.group(2), 16)
            entries[(group, record["private_creator"].strip(), element)] = record["vr"].strip()
    return SafePrivate(MappingProxyType(entries))
