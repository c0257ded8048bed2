"""Apply compiled PS3.15 Table E.1-1 rules to a header, at every nesting level, in place.

Elements the rules leave alone are never decoded: pydicom then writes their original bytes back
unchanged, which is what makes de-identification cheap (FIELD-NOTES.md: the cost is per-element
encoding).

Compound actions (Table E.1-1a) need to know whether the attribute is Type 1, 2 or 3 in the IOD,
which depends on the IOD and on the nesting context. Without that knowledge the choice is the one
valid for every type the code allows, and it never keeps the original value:

* present but empty → left empty: it carries nothing, and emptiness was already valid (or already
  an error) in the input, so no new error appears;
* Z/D, X/D, X/Z/D → D: a dummy is valid for Type 1, 2 and 3;
* X/Z → Z: zero length is valid for Type 2 and 3.

Sequences differ: an empty Type 3 sequence is an error when its module asks for an item, and
keeping items would keep contents the table does not list (Code Meaning under Institution Code
Sequence names the institution; under Person Identification Code Sequence, a person). So:

* X/Z/U* → U: the sequence is kept and every UID inside it replaced consistently, so references to
  other instances stay intact;
* X/Z, X/D, X/Z/D → X: these sequences are Type 3 in the modules that use them (General Study,
  General Series, General Equipment), except the two in SEQUENCE_TYPES, where PS3.3 makes them
  Type 2 (→ Z, no items) or Type 1 (→ D: items kept, each cleaned by the table).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from types import MappingProxyType

from pydicom.datadict import DicomDictionary, keyword_for_tag
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from .actions import Action
from .dates import shift_date, shift_datetime
from .dummies import dummy_for
from .encoder import STRING_VRS
from .errors import NotDeidentifiable
from .identifiers import Identifiers, is_registered_uid
from .pseudonyms import Pseudonymizer
from .rules import RuleSet
from .values import codec_of, element_string_values, string_values

PATIENT_NAME = 0x00100010
PATIENT_ID = 0x00100020
_PATIENT_TAGS = frozenset({PATIENT_ID, PATIENT_NAME})
Path = tuple[tuple[int, int], ...]

_TEXT_VRS = frozenset({"CS", "LO", "SH", "UC", "UR"})
_NARRATIVE_VRS = frozenset({"LT", "ST", "UT"})
_BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
# PS3.3 C.7.6.14 Acquisition Context Module (Type 2); C.10.10 Waveform Annotation Module (Type 1).
SEQUENCE_TYPES = MappingProxyType({0x00400555: Action.ZERO, 0x0040B020: Action.DUMMY})
# Type 1C attributes required exactly when another attribute is present. When the table removes
# the condition, the dependent goes too, or the output gains an error the input did not have.
# PS3.3 C.7.1.3: Ethics Committee Name is required if (and only if) the Approval Number is present.
CONDITIONAL_ON = MappingProxyType({0x00120081: 0x00120082})
_COMPOUND = MappingProxyType(
    {
        Action.ZERO_OR_DUMMY: Action.DUMMY,
        Action.REMOVE_OR_DUMMY: Action.DUMMY,
        Action.REMOVE_ZERO_OR_DUMMY: Action.DUMMY,
        Action.REMOVE_OR_ZERO: Action.ZERO,
        Action.REMOVE_ZERO_OR_UID: Action.UID,
    }
)


@dataclass(frozen=True)
class AttributeChange:
    """One change, for administrators previewing a profile (values are PHI: never log them)."""

    path: Path  # (sequence tag, item index) from the top level down to the element's dataset
    tag: int
    keyword: str
    action: str
    before: str
    after: str


@dataclass(frozen=True)
class Context:
    rules: RuleSet
    pseudonyms: Pseudonymizer
    identifiers: Identifiers
    day_shift: int
    codec: str | None  # of the dataset being transformed; None: ISO 2022, decode with pydicom
    changes: list[AttributeChange] | None = None  # collected only when previewing


def transform(ds: Dataset, ctx: Context, path: Path = ()) -> None:
    """De-identify ``ds`` and every dataset nested in it."""
    private: list[int] = []
    action_for = ctx.rules.action_for
    for tag in list(ds._dict):  # ds.keys(), without the Dataset method overhead
        if (tag >> 16) & 1:
            private.append(tag)
            continue
        action = action_for(int(tag))  # int keys: no BaseTag.__eq__ on the rule lookup
        if action is None:
            _unlisted(ds, tag, ctx, path)
        else:
            apply_action(ds, tag, action, ctx, path)
    if private:
        _private(ds, private, ctx, path)
    for dependent, condition in CONDITIONAL_ON.items():
        if dependent in ds and condition not in ds:
            apply_action(ds, dependent, Action.REMOVE, ctx, path)


def vr_of(ds: Dataset, tag: int) -> str:
    return _vr(_element(ds, tag), tag)


def _element(ds: Dataset, tag: int) -> DataElement | RawDataElement | None:
    """``ds.get_item(tag)`` for an int tag, straight from the element dict."""
    elem = ds._dict.get(tag)  # type: ignore[call-overload]  # BaseTag is an int
    if isinstance(elem, RawDataElement) and elem.value is None:
        return ds.get_item(tag)  # a deferred read: pydicom reads and converts it
    return elem


def is_standard_tag_written_as_un(tag: int) -> bool:
    """A public attribute the dictionary gives a VR for, found with VR UN (PS3.5 6.2.2: written by a
    system that did not know it)."""
    entry = DicomDictionary.get(tag) if not tag >> 16 & 1 else None
    return entry is not None and entry[0] != "UN"


def read_un_as_known(ds: Dataset) -> None:
    """Every standard attribute of `ds` (and its items) written with VR UN read with its dictionary VR,
    sequences parsed into items: as UN its values went out unchanged (a Scheduled Procedure Step
    Sequence's names, dates and IDs under every profile), unseen by the table's actions and the leak check."""
    for tag in list(ds._dict):
        elem = ds._dict[tag]
        if elem.VR == "UN" and is_standard_tag_written_as_un(int(tag)):
            elem = ds[tag]  # converted: pydicom's replace_un_with_known_vr, on by default
            if elem.VR == "UN":  # pydicom converts values under 64 KiB only: not released unread
                raise NotDeidentifiable("a standard attribute written with VR UN too long to read as its VR")
        if elem.VR == "SQ":
            for item in ds[tag].value:
                read_un_as_known(item)


def _vr(elem: DataElement | RawDataElement | None, tag: int) -> str:
    if elem is not None and elem.VR:
        return str(elem.VR)
    entry = DicomDictionary.get(tag)
    return entry[0] if entry else "UN"


def _unlisted(ds: Dataset, tag: int, ctx: Context, path: Path) -> None:
    """Attributes Table E.1-1 does not list are kept (Annex E lists what must change), except:"""
    group, element = tag >> 16, tag & 0xFFFF
    if element == 0 or group <= 0x0006:
        # Group lengths are retired (PS3.5 7.2) and groups 0-6 never belong in a dataset body.
        apply_action(ds, tag, Action.REMOVE, ctx, path)
        return
    vr = vr_of(ds, tag)
    if vr == "SQ":
        _recurse(ds, tag, ctx, path)
    elif vr == "UI":
        if not ctx.rules.retain_uids:
            apply_action(ds, tag, Action.UID, ctx, path)
    elif vr == "PN":
        # A person's name identifies by definition; names newer than the table get X/Z/D.
        apply_action(ds, tag, Action.REMOVE_ZERO_OR_DUMMY, ctx, path)
    elif vr in ("DA", "DT") and ctx.rules.shift_dates:
        # Every date moves by the same shift, or an unshifted one would reveal it (PS3.15 E.3.6).
        apply_action(ds, tag, Action.CLEAN, ctx, path)


def apply_action(ds: Dataset, tag: int, action: Action, ctx: Context, path: Path) -> None:
    if action is Action.REMOVE:
        _record(ctx, path, tag, action, ds, None)
        del ds[tag]
        return
    elem = _element(ds, tag)
    vr = _vr(elem, tag)
    if action is Action.KEEP:
        if vr == "SQ":
            _recurse(ds, tag, ctx, path)
        return
    if elem.length == 0 if isinstance(elem, RawDataElement) else ds[tag].is_empty:
        return  # nothing to protect; an empty value stays empty (see the module docstring)
    if isinstance(elem, RawDataElement) and vr in STRING_VRS and not (elem.value or b"").rstrip(b" \x00"):
        # Padding only is empty too, as pydicom reads it: written empty, whether or not something read it
        # first (a blank Patient ID was empty, a blank Patient's Name pseudonymised; the fast path the same).
        ds[tag] = DataElement(tag, vr, "")
        return
    if action.is_compound:
        action = _sequence_choice(tag, action) if vr == "SQ" else _COMPOUND[action]
        if action is Action.REMOVE:
            apply_action(ds, tag, action, ctx, path)
            return
    if vr == "SQ":
        if action is Action.ZERO:
            _record(ctx, path, tag, action, ds, "")
            ds[tag].value = []
        else:
            _recurse(ds, tag, ctx, path)  # D, U and C on a sequence clean each item
        return
    replacement = _replacement(ds, tag, vr, action, ctx)
    if replacement is _UNCHANGED:
        return
    if replacement is _REMOVE:
        _record(ctx, path, tag, Action.REMOVE, ds, None)
        del ds[tag]
        return
    _record(ctx, path, tag, action, ds, replacement)
    ds[tag] = DataElement(tag, vr.split(" ")[0], replacement)


_REMOVE = object()
_UNCHANGED = object()


def _sequence_choice(tag: int, action: Action) -> Action:
    if action is Action.REMOVE_ZERO_OR_UID:
        return Action.UID
    return SEQUENCE_TYPES.get(tag, Action.REMOVE)


def _replacement(ds: Dataset, tag: int, vr: str, action: Action, ctx: Context) -> object:
    """The new value; values are read (from raw bytes where possible) only when needed."""
    if (action is Action.ZERO or action is Action.DUMMY) and int(tag) in _PATIENT_TAGS:
        # Z allows a dummy (Table E.1-1a); the patient keeps a keyed pseudonym so that a recipient
        # can group studies by subject without learning who it is.
        return _patient_pseudonym(ds, tag, ctx)
    if action is Action.ZERO:
        return None
    if vr == "UI":
        uids = _values(ds, tag, ctx)
        mapped = [_uid(uid, ctx) for uid in uids]
        return _UNCHANGED if mapped == uids else _single(mapped)
    if action is Action.DUMMY or action is Action.UID:
        if vr == "PN":
            return ctx.pseudonyms.person_name(_first(_values(ds, tag, ctx)))
        return dummy_for(vr)
    return _cleaned(ds, tag, vr, ctx)


def _cleaned(ds: Dataset, tag: int, vr: str, ctx: Context) -> object:
    """Action C: the value with its identifying content replaced (PS3.15 E.3.5, E.3.6)."""
    if vr == "DA" or vr == "DT":
        shift = shift_date if vr == "DA" else shift_datetime
        shifted = [shift(value, ctx.day_shift) for value in _values(ds, tag, ctx)]
        # A date that cannot be parsed cannot be shifted, so it must not stay (zero length).
        return _single([v for v in shifted if v is not None]) if None not in shifted else None
    if vr == "AE":
        return _single([ctx.pseudonyms.ae_title(v) for v in _values(ds, tag, ctx)])
    if vr == "PN":
        return _single([ctx.pseudonyms.person_name(v) for v in _values(ds, tag, ctx)])
    if vr in _NARRATIVE_VRS:
        # Free text (comments, histories) names people the header never mentions elsewhere, so no
        # list of known identifiers can clean it: it is emptied (valid for Type 2 and 3).
        return None
    if vr in _TEXT_VRS:
        # Short descriptors keep their meaning once the instance's known identifiers are removed.
        pattern = ctx.identifiers.text_pattern
        if pattern is None or not any(pattern.search(v) for v in _values(ds, tag, ctx)):
            return _UNCHANGED
        value = ds[tag].value
        items = list(value) if isinstance(value, MultiValue | list) else [value]
        return _single([ctx.identifiers.redact(str(item)) for item in items])
    if vr in _BINARY_VRS:
        return _REMOVE  # bytes cannot be read for identifying text, so cleaning means removing
    return _UNCHANGED  # numbers, times, ages: nothing in them identifies once dates are handled


def _single(values: list[str]) -> object:
    if not values:
        return None
    return values if len(values) > 1 else values[0]


def _uid(uid: str, ctx: Context) -> str:
    return uid if not uid or is_registered_uid(uid) else ctx.pseudonyms.uid(uid)


def _patient_pseudonym(ds: Dataset, tag: int, ctx: Context) -> str:
    # Patient's Name takes the ID pseudonym of the same dataset (PatientID follows it in tag
    # order, so it still holds the original here), keeping name and ID consistent.
    ids = string_values(ds, PATIENT_ID, ctx.codec) if PATIENT_ID in ds else []
    anchor = ids[0] if ids else ""
    if not anchor:
        return ctx.pseudonyms.person_name(_first(_values(ds, tag, ctx)))
    pseudonym = ctx.pseudonyms.identifier(anchor)
    # As a name, the ID pseudonym is written family^given ("IMX^<code>", PS3.5 6.2.1).
    return pseudonym.replace("-", "^", 1) if tag == PATIENT_NAME else pseudonym


def _values(ds: Dataset, tag: int, ctx: Context) -> list[str]:
    """``string_values(ds, tag, ctx.codec)``."""
    return element_string_values(ds, tag, _element(ds, tag), ctx.codec)


def _first(values: list[str]) -> str:
    return values[0] if values else ""


def _recurse(ds: Dataset, tag: int, ctx: Context, path: Path) -> None:
    items = ds[tag].value
    if not items:
        return
    for index, item in enumerate(items):
        # An item may declare its own Specific Character Set (PS3.5 7.5.3).
        inner = replace(ctx, codec=codec_of(item, ctx.codec)) if 0x00080005 in item else ctx
        transform(item, inner, (*path, (tag, index)))


def _private(ds: Dataset, tags: list[int], ctx: Context, path: Path) -> None:
    """Private attributes: removed, unless Retain Safe Private keeps a Table E.3.10-1 element."""
    rules = ctx.rules
    keep_safe = rules.private is Action.CLEAN
    kept_blocks: set[tuple[int, int]] = set()
    creators: list[int] = []
    for tag in tags:
        group, element = tag >> 16, tag & 0xFFFF
        if 0x0010 <= element <= 0x00FF:
            creators.append(tag)
            continue
        block = (group, element >> 8)
        override = rules.exact.get(int(tag))
        if override is not None:
            if override is not Action.REMOVE:
                kept_blocks.add(block)
            apply_action(ds, tag, override, ctx, path)
        elif keep_safe and element >= 0x1000 and (safe_vr := _safe_vr(ds, tag, rules)) is not None:
            vr = vr_of(ds, tag)
            if vr == "UN" and safe_vr in ("SQ", "UI"):
                # Read without its VR (implicit VR, or written as UN): its items could not be cleaned nor
                # its UIDs remapped, and went out as received. Removed.
                apply_action(ds, tag, Action.REMOVE, ctx, path)
                continue
            kept_blocks.add(block)
            if vr == "SQ":
                _recurse(ds, tag, ctx, path)
            elif vr == "UI" and not rules.retain_uids:
                apply_action(ds, tag, Action.UID, ctx, path)
        else:
            apply_action(ds, tag, Action.REMOVE, ctx, path)
    for tag in creators:
        if (tag >> 16, tag & 0xFF) not in kept_blocks:
            apply_action(ds, tag, Action.REMOVE, ctx, path)


def _safe_vr(ds: Dataset, tag: int, rules: RuleSet) -> str | None:
    """The Table E.3.10-1 VR of a private element it lists as safe under its block's creator; None: not safe."""
    group, element = tag >> 16, tag & 0xFFFF
    creator = ds.get((group << 16) | (element >> 8))
    if creator is None:
        return None
    value = creator.value
    name = value.decode("latin-1") if isinstance(value, bytes) else str(value)
    return rules.safe_private.vr(group, name.strip("\x00 "), element & 0xFF)


def _record(ctx: Context, path: Path, tag: int, action: Action, ds: Dataset, after: object) -> None:
    if ctx.changes is None:
        return
    before = _display(ds[tag].value)
    if action is not Action.REMOVE and before == _display(after):
        return
    ctx.changes.append(
        AttributeChange(
            path=path,
            tag=tag,
            keyword=keyword_for_tag(tag) or "",
            action=action.value,
            before=before,
            after="" if after is None else _display(after),
        )
    )


def _display(value: object) -> str:
    if isinstance(value, MultiValue | list) and value and isinstance(value[0], Dataset):
        return f"<{len(value)} item(s)>"
    if isinstance(value, MultiValue | list):
        return "\\".join(str(item) for item in value)
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    return "" if value is None else str(value)
