"""The vendored standard tables are verbatim copies of the shared ones, and parse completely."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.deid.engine.actions import Action, Option
from services.deid.engine.table import DATA_DIR, Pattern, load_safe_private, load_table

SHARED = Path("/work/shared/standards")
FILES = ["ps3.15-table-e1-1.csv", "ps3.15-table-e3-10-1-safe-private.csv", "README.md"]


@pytest.mark.parametrize("name", FILES)
def test_vendored_copy_matches_the_shared_standard_byte_for_byte(name: str) -> None:
    if not SHARED.exists():
        pytest.skip("shared standards folder not present on this machine")
    assert (DATA_DIR / name).read_bytes() == (SHARED / name).read_bytes()


def test_table_e1_1_parses_every_row_with_its_patterns() -> None:
    table = load_table()
    assert len(table.rows) == 656
    assert set(table.by_pattern()) == set(Pattern)
    patient_name = table.by_tag()[0x00100010]
    assert patient_name.basic is Action.ZERO
    acquisition_date = table.by_tag()[0x00080022]
    assert acquisition_date.basic is Action.REMOVE_OR_ZERO
    assert acquisition_date.options[Option.RETAIN_LONGITUDINAL_MODIFIED_DATES] is Action.CLEAN
    assert table.by_pattern()[Pattern.PRIVATE].options == {Option.RETAIN_SAFE_PRIVATE: Action.CLEAN}


def test_safe_private_table_parses_creator_and_element_byte() -> None:
    safe = load_safe_private()
    assert len(safe.entries) > 400
    assert safe.is_safe(0x7053, "Philips PET Private Group", 0x00)
    assert not safe.is_safe(0x7053, "Someone Else", 0x00)
