"""The de-identification engine: a pure library (no Kafka, no Mongo), PS3.15 Annex E driven by data.

Public API::

    deidentify(data, profile, key) -> DeidResult
    preview(data, profile, key) -> list[AttributeChange]
    check_for_leaks(original_header, output_bytes, output_dataset, profile) -> list[Leak]
    Profile, Option, Action, PixelRule, Region, BUILTIN_PROFILES
    DeidError > NotDeidentifiable, BurnedInAnnotation, PhiLeak

See README.md in this folder for the rules chosen where the standard leaves a choice.
"""

from .actions import Action, Option
from .deidentifier import DeidResult, deidentify, preview
from .errors import BurnedInAnnotation, DeidError, NotDeidentifiable, PhiLeak
from .leaks import Leak, check_for_leaks
from .pixel_rules import PixelRule, Region
from .profile import BASIC, BUILTIN_PROFILES, RESEARCH, Profile
from .transform import AttributeChange

__all__ = [
    "BASIC",
    "BUILTIN_PROFILES",
    "RESEARCH",
    "Action",
    "AttributeChange",
    "BurnedInAnnotation",
    "DeidError",
    "DeidResult",
    "Leak",
    "NotDeidentifiable",
    "Option",
    "PhiLeak",
    "PixelRule",
    "Profile",
    "Region",
    "check_for_leaks",
    "deidentify",
    "preview",
]
