"""Display names (of organisations, partners, routes, analysts): free text an administrator types, which
other people then read in `imx` listings, the audit pages and change records.

Bounded, so one careless call cannot make every listing huge, and without the characters that make
text read other than it is: control characters (NUL, newlines, escape sequences for a terminal) and
the bidirectional overrides that reorder what follows them (a name ending in U+202E makes the next
column read backwards).
"""

from __future__ import annotations

import unicodedata

MAX_DISPLAY_NAME = 200

# Unicode's bidirectional formatting characters (UAX #9): they reorder, embed or isolate what follows.
_BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _refused(char: str) -> str | None:
    """Why `char` may not be in a display name, or None when it may."""
    if char in _BIDI_CONTROLS:
        return "a bidirectional control"
    if unicodedata.category(char) in ("Cc", "Zl", "Zp"):
        return "a control character"
    return None


def validate_display_name(name: str, what: str) -> str:
    """`name`, or ValueError naming the first character refused (by code point, so the message shows it
    whatever the terminal does with it)."""
    if len(name) > MAX_DISPLAY_NAME:
        raise ValueError(f"{what} name is {len(name)} characters long; at most {MAX_DISPLAY_NAME}")
    for position, char in enumerate(name, start=1):
        reason = _refused(char)
        if reason:
            raise ValueError(f"{what} name has U+{ord(char):04X}, {reason}, at character {position}")
    return name
