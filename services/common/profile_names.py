"""What a de-identification profile may be called, and the names of the engine's built-in profiles:
shared by the deid service, which keeps profiles, and routing, which names them in routes without
loading the engine (tests/unit/test_profile_names.py holds the built-in names to the engine's)."""

from __future__ import annotations

import re

from services.common.messages import shown

PROFILE_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
BUILTIN_PROFILE_NAMES = frozenset({"basic", "research"})


def validate_profile_name(name: object) -> str:
    if not isinstance(name, str) or not PROFILE_NAME.fullmatch(name):
        given = shown(name) if isinstance(name, str) else repr(name)
        raise ValueError(
            f"bad profile name {given}: 1-64 characters, lower-case letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name
