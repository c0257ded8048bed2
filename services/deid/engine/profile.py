"""De-identification profiles: the Basic Profile plus options, overrides and pixel-clean rules."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from types import MappingProxyType

from .actions import Action, Option
from .pixel_rules import PixelRule
from .rules import RuleSet, compile_rules
from .table import load_safe_private, load_table


def _no_overrides() -> Mapping[int, Action]:
    return MappingProxyType({})


@dataclass(frozen=True)
class Profile:
    """What one recipient may receive.

    ``options`` are PS3.15 Table E.1-1 option columns (combinable, except the two longitudinal
    date options, which contradict each other). ``overrides`` replace the table's action for an
    exact tag (a standard tag, or a private tag including its block byte) after the options are
    applied. ``pixel_rules`` let burned-in instances through when a rule for their device masks the
    text (PS3.15 E.3.1, Clean Pixel Data Option).
    """

    name: str
    version: str = "1"
    options: frozenset[Option] = frozenset()
    overrides: Mapping[int, Action] = field(default_factory=_no_overrides, hash=False)
    pixel_rules: tuple[PixelRule, ...] = ()

    def __post_init__(self) -> None:
        if {
            Option.RETAIN_LONGITUDINAL_FULL_DATES,
            Option.RETAIN_LONGITUDINAL_MODIFIED_DATES,
        } <= self.options:
            raise ValueError("full dates and modified dates options are mutually exclusive")
        object.__setattr__(self, "options", frozenset(Option(option) for option in self.options))
        object.__setattr__(
            self,
            "overrides",
            MappingProxyType({int(tag): Action(action) for tag, action in self.overrides.items()}),
        )

    @cached_property
    def rules(self) -> RuleSet:
        """The compiled rules, built once per profile object from the vendored tables."""
        return compile_rules(load_table(), load_safe_private(), self.options, self.overrides)

    def with_options(self, *options: Option) -> Profile:
        return Profile(self.name, self.version, self.options | set(options), self.overrides, self.pixel_rules)


BASIC = Profile(name="basic")
RESEARCH = Profile(
    name="research",
    options=frozenset(
        {
            Option.RETAIN_LONGITUDINAL_MODIFIED_DATES,
            Option.RETAIN_PATIENT_CHARACTERISTICS,
            Option.CLEAN_DESCRIPTORS,
        }
    ),
)
BUILTIN_PROFILES: Mapping[str, Profile] = MappingProxyType({"basic": BASIC, "research": RESEARCH})
