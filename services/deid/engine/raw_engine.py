"""The fast path: the same decisions as transform.py, on raw elements (raw_elements.py), no pydicom.

Why: building pydicom datasets and converting values cost about two thirds of de-identifying a CT
instance. Here a value is read (decoded from bytes) only when a decision needs it, and an element
nobody changes is written back byte for byte.

It covers the common case and hands everything else to the pydicom path (deidentifier.py) by raising
``Unsupported``: other encodings (big endian, deflate), character sets with code
extensions or per-item character sets, instances that may carry burned-in text (masking and refusal
live there), Retain Safe Private with private elements present, values a string VR cannot hold,
and any possible leak (so the pydicom path names the offending tag). Both paths must give the same
de-identified attributes: tests/unit/deid/test_raw_engine.py compares them.
"""

from __future__ import annotations

import struct

from pydicom import charset
from pydicom._uid_dict import UID_dictionary

from .actions import Action, Option
from .burned_in import flag_says, risky_source
from .container import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION, Source
from .dates import shift_date, shift_datetime
from .dummies import dummy_for
from .encoder import _CHARSET_VRS, STRING_VRS, framed_file_meta
from .identifiers import (
    _INTERESTING_VRS,
    IDENTIFIER_TAGS,
    Identifiers,
    _dictionary_vr,
    build_identifiers,
    remember_values,
)
from .method import MAX_LO, method_codes
from .pixel_text import embedded_text_of_element, has_text_segments
from .profile import Profile
from .pseudonyms import Pseudonymizer
from .raw_elements import Element, Items, RawFile, Unsupported, encode, read
from .rules import RuleSet
from .transform import (
    _BINARY_VRS,
    _COMPOUND,
    _NARRATIVE_VRS,
    _PATIENT_TAGS,
    _REMOVE,
    _TEXT_VRS,
    _UNCHANGED,
    CONDITIONAL_ON,
    PATIENT_ID,
    PATIENT_NAME,
    SEQUENCE_TYPES,
    _first,
    _single,
    is_standard_tag_written_as_un,
)
from .values import _ESCAPE, clean_values

SPECIFIC_CHARACTER_SET = 0x00080005
_NUMBER_FORMATS = {"US": "<H", "SS": "<h", "UL": "<I", "SL": "<i", "FL": "<f", "FD": "<d", "SV": "<q", "UV": "<Q"}


class RawResult:
    """What deidentifier.DeidResult needs from the fast path."""

    __slots__ = ("header", "identity", "pixel_bytes")

    def __init__(self, header: bytes, pixel_bytes: memoryview, identity: dict[str, str]) -> None:
        self.header = header
        self.pixel_bytes = pixel_bytes
        self.identity = identity


class _Context:
    __slots__ = ("codec", "day_shift", "identifiers", "implicit", "pseudonyms", "rules")

    def __init__(
        self,
        rules: RuleSet,
        pseudonyms: Pseudonymizer,
        identifiers: Identifiers,
        day_shift: int,
        codec: str,
        implicit: bool = False,
    ) -> None:
        self.rules = rules
        self.pseudonyms = pseudonyms
        self.identifiers = identifiers
        self.day_shift = day_shift
        self.codec = codec
        self.implicit = implicit


def deidentify_raw(data: Source, profile: Profile, pseudonyms: Pseudonymizer) -> RawResult:
    """De-identify on the fast path, or raise Unsupported (never any other exception type on purpose)."""
    rules = profile.rules
    raw = read(data)
    body = raw.body
    representation = body.get(0x00280103)
    if representation is not None and len(representation.value) != 2:
        # Malformed: the pydicom path reads it (recording the method) and refuses the instance.
        raise Unsupported("a Pixel Representation that is not one US")
    codec = _codec(body)
    if raw.compressed and has_text_segments(raw.pixel_bytes, raw.implicit):
        raise Unsupported("text segments in compressed pixel data: the pydicom path removes them")
    if _may_have_burned_in_text(body, raw):
        raise Unsupported("burned-in text is the pydicom path's business")
    identifiers = _collect_identifiers(body, rules, codec)
    day_shift = pseudonyms.day_shift(_shift_anchor(body, codec))
    ctx = _Context(rules, pseudonyms, identifiers, day_shift, codec, raw.implicit)
    _transform(body, ctx)
    _record_method(body, profile, codec)
    meta = _file_meta(body, raw, pseudonyms, rules.retain_uids)
    out = bytearray(meta)
    encode(body, out, raw.implicit)
    header = bytes(out)
    hits = identifiers.scan_bytes(header)
    if (
        hits.sources
        or hits.suspect
        or (raw.compressed and identifiers.sources_in_bytes(embedded_text_of_element(raw.pixel_bytes, raw.implicit)))
    ):
        raise Unsupported("a possible leak: the pydicom path locates it")
    identity = {
        "study_instance_uid": _value_text(body, 0x0020000D),
        "series_instance_uid": _value_text(body, 0x0020000E),
        "sop_instance_uid": _value_text(body, 0x00080018),
        "sop_class_uid": _value_text(body, 0x00080016),
        "transfer_syntax_uid": raw.transfer_syntax,
        "modality": _value_text(body, 0x00080060),
        "patient_id": _value_text(body, PATIENT_ID),
    }
    return RawResult(header, raw.pixel_bytes, identity)


# -- reading values ---------------------------------------------------------------------------------


def _codec(items: Items, inherited: str = "iso8859") -> str:
    elem = items.get(SPECIFIC_CHARACTER_SET)
    if elem is None:
        return inherited
    names = elem.value.decode("ascii", "replace").strip(" \x00").split("\\")
    if len(names) > 1 or _ESCAPE in elem.value:
        raise Unsupported("code extensions")
    return str(charset.convert_encodings([names[0].strip()])[0])


def _strings(elem: Element, codec: str) -> list[str]:
    """The element's values, stripped and whitespace-collapsed, empty ones dropped (values.py)."""
    value = elem.value
    if _ESCAPE in value:
        raise Unsupported("escape sequences")
    return clean_values(value.decode(codec, "replace").split("\\"))


def _value_text(items: Items, tag: int) -> str:
    elem = items.get(tag)
    if elem is None or elem.items is not None:
        return ""
    return elem.value.decode("latin-1").strip(" \x00")


def _top_text(items: Items, tag: int, codec: str) -> str:
    elem = items.get(tag)
    if elem is None:
        return ""
    text = elem.value.decode(codec, "replace").strip(" \x00")
    if "\\" in text:
        raise Unsupported("multi-valued")
    return text


def _may_have_burned_in_text(body: Items, raw: RawFile) -> bool:
    """burned_in.may_have_burned_in_text on raw elements: the values as pydicom reads them (trailing
    padding dropped, leading kept), judged by the same `flag_says` and `risky_source`."""
    if not len(raw.pixel_bytes) and 0x00280010 not in body:
        return False
    said = flag_says(_as_read(body, 0x00280301))
    if said is not None:
        return said
    return risky_source(_as_read(body, 0x00080060), _as_read(body, 0x00080016))


def _as_read(items: Items, tag: int) -> str:
    elem = items.get(tag)
    if elem is None or elem.items is not None:
        return ""
    text = elem.value.decode("ascii", "replace").rstrip(" \x00")
    if "\\" in text:
        raise Unsupported("multi-valued")
    return text


def _shift_anchor(body: Items, codec: str) -> str:
    for keyword, tag in (("PatientID", PATIENT_ID), ("StudyInstanceUID", 0x0020000D)):
        value = _top_text(body, tag, codec).strip()
        if value:
            return f"{keyword}:{value}"
    return ""


# -- identifiers (identifiers.collect_identifiers) ----------------------------------------------------


def _collect_identifiers(body: Items, rules: RuleSet, codec: str) -> Identifiers:
    text: dict[str, int] = {}
    uids: dict[str, int] = {}
    _collect(body, rules, codec, text, uids)
    elem = body.get(SPECIFIC_CHARACTER_SET)
    name = elem.value.decode("ascii", "replace").strip(" \x00") if elem is not None else ""
    encodings = tuple(charset.convert_encodings([name or "ISO_IR 6"]))
    return build_identifiers(text, uids, encodings)


def _collect(items: Items, rules: RuleSet, codec: str, text: dict[str, int], uids: dict[str, int]) -> None:
    exact = rules.exact
    retain_uids = rules.retain_uids
    for tag, elem in items.items():
        vr = elem.vr
        if vr == "UN" and is_standard_tag_written_as_un(tag):
            # Its items or value would be taken for unknown bytes and kept as they are: the pydicom path
            # reads it with its dictionary VR (deidentifier.read_un_as_known).
            raise Unsupported("a standard attribute written with VR UN")
        if elem.items is not None:
            # Every sequence's items, a private one in implicit VR too (read as "UN" with items): what
            # they hold is looked for elsewhere, as the pydicom path does (identifiers.py opens them).
            for item in elem.items:
                _collect(item, rules, _item_codec(item, codec), text, uids)
            continue
        if vr not in _INTERESTING_VRS and tag not in IDENTIFIER_TAGS:
            continue
        if exact.get(tag) is Action.KEEP:
            continue
        remember_values(vr, tag, _strings(elem, codec), retain_uids, text, uids)


def _item_codec(item: Items, codec: str) -> str:
    if SPECIFIC_CHARACTER_SET in item:
        raise Unsupported("an item with its own character set")
    return codec


# -- the transform (transform.py) --------------------------------------------------------------------


def _transform(items: Items, ctx: _Context) -> None:
    private: list[int] = []
    action_for = ctx.rules.action_for
    for tag in list(items):
        if (tag >> 16) & 1:
            private.append(tag)
            continue
        action = action_for(tag)
        if action is None:
            _unlisted(items, tag, ctx)
        else:
            _apply(items, tag, action, ctx)
    if private:
        _private(items, private, ctx)
    for dependent, condition in CONDITIONAL_ON.items():
        if dependent in items and condition not in items:
            del items[dependent]


def _unlisted(items: Items, tag: int, ctx: _Context) -> None:
    group, element = tag >> 16, tag & 0xFFFF
    if element == 0 or group <= 0x0006:
        del items[tag]
        return
    vr = items[tag].vr
    if vr == "SQ":
        _recurse(items[tag], ctx)
    elif vr == "UI":
        if not ctx.rules.retain_uids:
            _apply(items, tag, Action.UID, ctx)
    elif vr == "PN":
        _apply(items, tag, Action.REMOVE_ZERO_OR_DUMMY, ctx)
    elif vr in ("DA", "DT") and ctx.rules.shift_dates:
        _apply(items, tag, Action.CLEAN, ctx)


def _apply(items: Items, tag: int, action: Action, ctx: _Context) -> None:
    if action is Action.REMOVE:
        del items[tag]
        return
    elem = items[tag]
    vr = elem.vr
    if action is Action.KEEP:
        if elem.items is not None:
            _recurse(elem, ctx)
        return
    if (not elem.items) if elem.items is not None else not elem.value:
        return  # empty stays empty (transform.py's module docstring)
    if elem.items is None and vr in STRING_VRS and not elem.value.rstrip(b" \x00"):
        # Padding only is empty, written with no value (transform.apply_action): a blank Patient ID was
        # pseudonymised here, one pseudonym for every blank patient.
        items[tag] = Element(tag, vr, b"")
        return
    if action.is_compound:
        if elem.items is not None:
            action = Action.UID if action is Action.REMOVE_ZERO_OR_UID else SEQUENCE_TYPES.get(tag, Action.REMOVE)
        else:
            action = _COMPOUND[action]
        if action is Action.REMOVE:
            del items[tag]
            return
    if elem.items is not None:
        if action is Action.ZERO:
            elem.items = []
        else:
            _recurse(elem, ctx)
        return
    replacement = _replacement(items, elem, action, ctx)
    if replacement is _UNCHANGED:
        return
    if replacement is _REMOVE:
        del items[tag]
        return
    elem.value = _encoded(vr.split(" ")[0], replacement, ctx.codec)  # "US or SS": its first reading, as pydicom


def _replacement(items: Items, elem: Element, action: Action, ctx: _Context) -> object:
    tag, vr = elem.tag, elem.vr
    if (action is Action.ZERO or action is Action.DUMMY) and tag in _PATIENT_TAGS:
        return _patient_pseudonym(items, elem, ctx)
    if action is Action.ZERO:
        return None
    if vr == "UI":
        uids = _strings(elem, ctx.codec)
        mapped = [_uid(uid, ctx) for uid in uids]
        return _UNCHANGED if mapped == uids else _single(mapped)
    if action is Action.DUMMY or action is Action.UID:
        if vr == "PN":
            return ctx.pseudonyms.person_name(_first(_strings(elem, ctx.codec)))
        return dummy_for(vr)
    return _cleaned(elem, ctx)


def _cleaned(elem: Element, ctx: _Context) -> object:
    vr = elem.vr
    if vr == "DA" or vr == "DT":
        shift = shift_date if vr == "DA" else shift_datetime
        shifted = [shift(value, ctx.day_shift) for value in _strings(elem, ctx.codec)]
        return _single([v for v in shifted if v is not None]) if None not in shifted else None
    if vr == "AE":
        return _single([ctx.pseudonyms.ae_title(v) for v in _strings(elem, ctx.codec)])
    if vr == "PN":
        return _single([ctx.pseudonyms.person_name(v) for v in _strings(elem, ctx.codec)])
    if vr in _NARRATIVE_VRS:
        return None
    if vr in _TEXT_VRS:
        pattern = ctx.identifiers.text_pattern
        if pattern is None or not any(pattern.search(v) for v in _strings(elem, ctx.codec)):
            return _UNCHANGED
        parts = elem.value.decode(ctx.codec, "replace").split("\\")
        return _single([ctx.identifiers.redact(part.strip(" \x00")) for part in parts])
    if vr in _BINARY_VRS:
        return _REMOVE
    return _UNCHANGED


def _patient_pseudonym(items: Items, elem: Element, ctx: _Context) -> str:
    id_elem = items.get(PATIENT_ID)
    ids = _strings(id_elem, ctx.codec) if id_elem is not None else []
    anchor = ids[0] if ids else ""
    if not anchor:
        return ctx.pseudonyms.person_name(_first(_strings(elem, ctx.codec)))
    pseudonym = ctx.pseudonyms.identifier(anchor)
    return pseudonym.replace("-", "^", 1) if elem.tag == PATIENT_NAME else pseudonym


def _uid(uid: str, ctx: _Context) -> str:
    return uid if not uid or uid in UID_dictionary else ctx.pseudonyms.uid(uid)


def _recurse(elem: Element, ctx: _Context) -> None:
    for item in elem.items or ():
        _item_codec(item, ctx.codec)
        _transform(item, ctx)


def _private(items: Items, tags: list[int], ctx: _Context) -> None:
    rules = ctx.rules
    if rules.private is Action.CLEAN:
        raise Unsupported("Retain Safe Private reads private creators: the pydicom path")
    kept_blocks: set[tuple[int, int]] = set()
    creators: list[int] = []
    for tag in tags:
        group, element = tag >> 16, tag & 0xFFFF
        if 0x0010 <= element <= 0x00FF:
            creators.append(tag)
            continue
        override = rules.exact.get(tag)
        if override is not None:
            if ctx.implicit:
                raise Unsupported("implicit VR private elements the profile keeps: their VR is the pydicom path's")
            if override is not Action.REMOVE:
                kept_blocks.add((group, element >> 8))
            _apply(items, tag, override, ctx)
        else:
            del items[tag]
    for tag in creators:
        if (tag >> 16, tag & 0xFF) not in kept_blocks:
            del items[tag]


# -- writing values ----------------------------------------------------------------------------------


def _encoded(vr: str, value: object, codec: str) -> bytes:
    """A replacement value as bytes, padded to even length (encoder._copy_string's rules)."""
    if value is None:
        return b""
    if isinstance(value, bytes):
        return value if len(value) % 2 == 0 else value + b"\x00"
    if isinstance(value, int | float) and vr in _NUMBER_FORMATS:
        return struct.pack(_NUMBER_FORMATS[vr], value)
    if isinstance(value, str):
        text = value
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        text = "\\".join(value)
    else:
        raise Unsupported("a value only pydicom can write")
    if vr not in STRING_VRS:
        # A name or a method written as OB, US, FD...: text under a binary VR is no value pydicom writes
        # (that path refuses the instance), and no valid element either.
        raise Unsupported("text for an element of a binary or numeric VR")
    if vr in _CHARSET_VRS:
        try:
            data = text.encode(codec)
        except (UnicodeEncodeError, LookupError):
            raise Unsupported("not encodable in the dataset's character set") from None
    elif text.isascii():
        data = text.encode("ascii")
    else:
        raise Unsupported("non-ASCII text in a VR without a character set")
    if len(data) % 2:
        data += b"\x00" if vr == "UI" else b" "
    return data


def _set(items: Items, tag: int, value: object, codec: str) -> None:
    existing = items.get(tag)
    if existing is not None and existing.items is not None:
        raise Unsupported("a value for an element written as a sequence")  # pydicom refuses it too
    vr = existing.vr if existing is not None else _dictionary_vr(tag)
    items[tag] = Element(tag, vr, _encoded(vr, value, codec))


def _record_method(body: Items, profile: Profile, codec: str) -> None:
    """method.record_method on raw elements (no pixel cleaning on this path)."""
    options = profile.rules.options
    codes = method_codes(options, False)
    _set(body, 0x00120062, "YES", codec)
    _set(
        body,
        0x00120063,
        [f"imx {profile.name} v{profile.version}"[:MAX_LO]] + [meaning[:MAX_LO] for _, meaning in codes],
        codec,
    )
    items: list[Items] = []
    for value, meaning in codes:
        item: Items = {}
        _set(item, 0x00080100, value, codec)
        _set(item, 0x00080102, "DCM", codec)
        _set(item, 0x00080104, meaning, codec)
        items.append(item)
    existing = body.get(0x00120064)
    if existing is not None and existing.items is None:
        raise Unsupported("De-identification Method Code Sequence written as a value")  # pydicom refuses it
    body[0x00120064] = Element(0x00120064, "SQ", b"", items)
    if Option.RETAIN_LONGITUDINAL_MODIFIED_DATES in options:
        _set(body, 0x00280303, "MODIFIED", codec)
    elif Option.RETAIN_LONGITUDINAL_FULL_DATES in options:
        _set(body, 0x00280303, "UNMODIFIED", codec)


def _file_meta(body: Items, raw: RawFile, pseudonyms: Pseudonymizer, retain_uids: bool) -> bytes:
    """container.file_meta_for + encoder.encode_file_meta on raw elements."""
    media_uid = raw.media_sop_instance_uid
    if not (retain_uids or not media_uid or media_uid in UID_dictionary):
        media_uid = pseudonyms.uid(media_uid)
    sop_instance = _value_text(body, 0x00080018) if 0x00080018 in body else media_uid
    meta: Items = {
        0x00020001: Element(0x00020001, "OB", b"\x00\x01"),
        0x00020002: Element(0x00020002, "UI", _encoded("UI", _value_text(body, 0x00080016), "ascii")),
        0x00020003: Element(0x00020003, "UI", _encoded("UI", sop_instance, "ascii")),
        0x00020010: Element(0x00020010, "UI", _encoded("UI", raw.transfer_syntax, "ascii")),
        0x00020012: Element(0x00020012, "UI", _encoded("UI", IMPLEMENTATION_CLASS_UID, "ascii")),
        0x00020013: Element(0x00020013, "SH", _encoded("SH", IMPLEMENTATION_VERSION, "ascii")),
    }
    out = bytearray()
    encode(meta, out)
    return framed_file_meta(bytes(out))
