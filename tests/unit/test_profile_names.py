"""Routing knows the built-in profiles by name without loading the de-identification engine: the
names must stay the engine's."""

from __future__ import annotations

import pytest

from services.common.profile_names import BUILTIN_PROFILE_NAMES, validate_profile_name
from services.deid.engine import BUILTIN_PROFILES


def test_the_builtin_names_are_the_engines() -> None:
    assert frozenset(BUILTIN_PROFILES) == BUILTIN_PROFILE_NAMES


@pytest.mark.parametrize("name", ["", "Research", "-x", "a" * 65, "a b", "x\n"])
def test_names_outside_the_alphabet_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="bad profile name"):
        validate_profile_name(name)


def test_a_long_name_is_not_echoed_whole() -> None:
    with pytest.raises(ValueError) as refused:
        validate_profile_name("a" * 100_000)
    assert len(str(refused.value)) < 300
