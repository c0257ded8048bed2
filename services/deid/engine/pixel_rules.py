"""Pixel-clean rules: rectangles to blank for a known device layout (after RSNA CTP's pixel anonymizer).

A rule applies when every condition it sets matches the instance; the rectangles are then set to
zero in every frame. Rules are data, kept per profile, written by administrators who have looked at
that device's screens.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.dataset import Dataset


@dataclass(frozen=True)
class Region:
    """A rectangle in pixel coordinates: columns x..x+width, rows y..y+height."""

    x: int
    y: int
    width: int
    height: int


@dataclass(frozen=True)
class PixelRule:
    """A device signature and the regions where that device burns in text.

    ``None`` matches anything; text fields match case-insensitively after trimming.
    """

    regions: tuple[Region, ...]
    manufacturer: str | None = None
    model: str | None = None
    rows: int | None = None
    columns: int | None = None
    modality: str | None = None

    def matches(self, ds: Dataset) -> bool:
        return (
            _text_matches(self.manufacturer, ds.get("Manufacturer"))
            and _text_matches(self.model, ds.get("ManufacturerModelName"))
            and _text_matches(self.modality, ds.get("Modality"))
            and (self.rows is None or ds.get("Rows") == self.rows)
            and (self.columns is None or ds.get("Columns") == self.columns)
        )


def _text_matches(wanted: str | None, actual: object) -> bool:
    if wanted is None:
        return True
    return isinstance(actual, str) and actual.strip().casefold() == wanted.strip().casefold()


def matching_rule(rules: tuple[PixelRule, ...], ds: Dataset) -> PixelRule | None:
    return next((rule for rule in rules if rule.matches(ds)), None)
