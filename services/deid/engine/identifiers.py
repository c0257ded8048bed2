"""The identifying values of one original instance, as patterns to redact and to hunt for.

Collected from the original header before anything changes, then used twice: to clean text
attributes (action C: remove the known identifiers, PS3.15 E.3.5) and to check the output for leaks
before release. Matching is by whole token, case-insensitive, with minimum lengths, so that short
values ("M", "1", "CT") and substrings of ordinary words do not count as leaks.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from types import MappingProxyType

from pydicom import charset
from pydicom._uid_dict import UID_dictionary
from pydicom.datadict import DicomDictionary, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from .actions import Action
from .rules import RuleSet
from .values import codec_of, element_string_values

# Whole values that identify a patient, a visit or a device (the values the Basic Profile removes
# because they link back to a person, PS3.15 E.1.1). Person names are found by VR instead.
IDENTIFIER_KEYWORDS = (
    "PatientID",
    "OtherPatientIDs",
    "AccessionNumber",
    "AdmissionID",
    "MedicalRecordLocator",
    "PatientAddress",
    "PatientTelephoneNumbers",
    "PatientTelecomInformation",
    "PatientBirthDate",
    "ReferringPhysicianAddress",
    "ReferringPhysicianTelephoneNumbers",
    "PersonAddress",
    "PersonTelephoneNumbers",
    "PersonTelecomInformation",
    "InstitutionName",
    "InstitutionAddress",
    "InstitutionalDepartmentName",
    "StationName",
    "DeviceSerialNumber",
    "StudyID",
    "RequestedProcedureID",
    "ScheduledProcedureStepID",
    "PerformedProcedureStepID",
    "FillerOrderNumberImagingServiceRequest",
    "PlacerOrderNumberImagingServiceRequest",
    "ServiceEpisodeID",
    "PatientInstitutionResidence",
    "CurrentPatientLocation",
    "ResponsibleOrganization",
    "DetectorID",
    "GantryID",
    "GeneratorID",
    "PlateID",
    "CassetteID",
    "SourceSerialNumber",
)
IDENTIFIER_TAGS = frozenset(tag_for_keyword(keyword) or 0 for keyword in IDENTIFIER_KEYWORDS)
MIN_NAME_TOKEN = 3
MIN_IDENTIFIER = 4
# Tokens our own replacements contain: an input that was already de-identified by imx must not
# make its own pseudonyms look like leaks.
OWN_TOKENS = frozenset({"imx", "anonymized", "anonymous"})
_NAME_TOKEN = re.compile(r"[^\W\d_]{" + str(MIN_NAME_TOKEN) + ",}")
_LETTERS = re.compile(r"[^\W\d_]+")


@dataclass(frozen=True)
class Identifiers:
    """Needles (case-folded text → the original attribute they came from) and their patterns."""

    text: Mapping[str, int]
    uids: Mapping[str, int]
    encodings: tuple[str, ...]
    byte_needles: tuple[tuple[bytes, int, bool], ...]  # (lower-case needle, source tag, is a UID)

    # Compiled on first use: the Basic Profile's release check needs only byte_needles.
    @cached_property
    def text_pattern(self) -> re.Pattern[str] | None:
        return _text_pattern(self.text)

    @cached_property
    def uid_pattern(self) -> re.Pattern[str] | None:
        return _uid_pattern(self.uids)

    def redact(self, value: str) -> str:
        """Remove every known identifier from a text value (action C on a descriptor)."""
        if self.text_pattern is None:
            return value
        cleaned = self.text_pattern.sub("", value)
        return " ".join(cleaned.split()) if cleaned != value else value

    def sources_in_text(self, value: str) -> list[int]:
        found = []
        if self.text_pattern is not None:
            found = [self.text[m.group(0).casefold()] for m in self.text_pattern.finditer(value)]
        if self.uid_pattern is not None:
            found.extend(self.uids[m.group(0)] for m in self.uid_pattern.finditer(value))
        return found

    def sources_in_bytes(self, data: bytes | memoryview) -> list[int]:
        """Sources of the needles found in ``data`` as whole tokens (ASCII case-insensitive)."""
        return self.scan_bytes(data).sources

    def scan_bytes(self, data: bytes | memoryview) -> ByteHits:
        """The needles found in ``data``: as whole tokens, and whole at one edge only.

        The encoded header's bytes around a value are not text: a value's last byte is followed by the
        next element's tag, whose first byte is often a letter or digit (group 0x0032 is "2", 0x0054
        "T"), so a name ending a value was not a whole token there and went out. A needle whole at one
        edge is a `suspect`: the element-by-element search (leaks.py) tells.

        bytes.find runs at memchr speed; one pass per needle beats one regex alternation over
        a few kilobytes of header by several times.
        """
        lowered = bytes(data).lower()
        found = []
        suspect = False
        for needle, source, is_uid in self.byte_needles:
            inner = _UID_CHARS if is_uid else _WORD_CHARS
            start = lowered.find(needle)
            while start != -1:
                before, after = _edges(lowered, start, start + len(needle), inner)
                if before and after:
                    found.append(source)
                    break
                suspect = suspect or before or after
                start = lowered.find(needle, start + 1)
        return ByteHits(found, suspect)


def build_identifiers(text: Mapping[str, int], uids: Mapping[str, int], encodings: tuple[str, ...]) -> Identifiers:
    return Identifiers(
        MappingProxyType(dict(text)),
        MappingProxyType(dict(uids)),
        encodings,
        _byte_needles(text, uids, encodings),
    )


def collect_identifiers(ds: Dataset, rules: RuleSet) -> Identifiers:
    """Every identifying value of ``ds`` (recursively, private blocks included) the profile removes."""
    text: dict[str, int] = {}
    uids: dict[str, int] = {}
    _collect(ds, rules, codec_of(ds), text, uids)
    encodings = ds.get("SpecificCharacterSet") or "ISO_IR 6"
    names = list(encodings) if isinstance(encodings, MultiValue | list) else [str(encodings)]
    return build_identifiers(text, uids, tuple(charset.convert_encodings(names)))


def _collect(ds: Dataset, rules: RuleSet, codec: str | None, text: dict[str, int], uids: dict[str, int]) -> None:
    # Works on the element dict directly: Dataset.get_item/keys cost a Tag() conversion per call,
    # and only the elements that can hold an identifier (PN, UI, SQ, IDENTIFIER_TAGS) are looked at.
    exact = rules.exact
    retain_uids = rules.retain_uids
    for tag, raw in list(ds._dict.items()):
        if isinstance(raw, RawDataElement) and raw.value is None:
            raw = ds.get_item(tag)  # a deferred read: let pydicom read it, as get_item does
        vr = raw.VR or _dictionary_vr(tag)
        if vr not in _INTERESTING_VRS and tag not in IDENTIFIER_TAGS:
            continue
        if vr != "SQ" and exact.get(tag) is Action.KEEP:
            continue  # the profile keeps this value on purpose (an option or an override)
        try:
            if vr == "SQ":
                for item in ds[tag].value or ():
                    _collect(item, rules, codec_of(item, codec), text, uids)
                continue
            values = element_string_values(ds, tag, raw, codec)
        except Exception:  # an undecodable value is left to the transform to reject
            continue
        remember_values(vr, int(tag), values, retain_uids, text, uids)


def remember_values(
    vr: str, source: int, values: list[str], retain_uids: bool, text: dict[str, int], uids: dict[str, int]
) -> None:
    """Add one element's values to the needles: UIDs whole, person names by token, other IDs whole."""
    if vr == "UI":
        if not retain_uids:
            for v in values:
                if v not in uids and v not in UID_dictionary:
                    uids[v] = source
    elif vr == "PN":
        for value in values:
            for token in _NAME_TOKEN.findall(value):
                folded = token.casefold()
                if folded not in OWN_TOKENS:
                    text.setdefault(folded, source)
            for phrase in _short_name_phrases(value):
                text.setdefault(phrase, source)
    else:
        for value in values:
            if len(value) >= MIN_IDENTIFIER:
                folded = value.casefold()
                if folded not in OWN_TOKENS:
                    text.setdefault(folded, source)


def _short_name_phrases(value: str) -> list[str]:
    """A name with a part too short to be a token of its own (Wu^Li, Ng^Ho): its family and given names
    as a phrase, in both orders and as "family, given", so "CT head Wu Li" and "Li, Wu" are found; each part
    alone would match everywhere."""
    family, _, rest = value.split("=")[0].partition("^")
    given = rest.partition("^")[0]
    family, given = family.strip(), given.strip()
    if not (_LETTERS.fullmatch(family) and _LETTERS.fullmatch(given)) or min(len(family), len(given)) >= MIN_NAME_TOKEN:
        return []  # letters only: an operator recorded as "CT^1" would make "CT 1" a name
    return [f"{family} {given}".casefold(), f"{given} {family}".casefold(), f"{family}, {given}".casefold()]


_INTERESTING_VRS = frozenset({"PN", "UI", "SQ"})


def is_registered_uid(uid: str) -> bool:
    """Well-known UIDs (SOP classes, transfer syntaxes, coding schemes...) are never remapped."""
    return uid in UID_dictionary


def _dictionary_vr(tag: int) -> str:
    entry = DicomDictionary.get(tag)
    return entry[0] if entry else "UN"


def _text_pattern(text: Mapping[str, int]) -> re.Pattern[str] | None:
    if not text:
        return None
    alternatives = "|".join(re.escape(n) for n in sorted(text, key=len, reverse=True))
    return re.compile(r"(?<![^\W_])(?:" + alternatives + r")(?![^\W_])", re.IGNORECASE)


def _uid_pattern(uids: Mapping[str, int]) -> re.Pattern[str] | None:
    if not uids:
        return None
    alternatives = "|".join(re.escape(u) for u in sorted(uids, key=len, reverse=True))
    return re.compile(r"(?<![0-9.])(?:" + alternatives + r")(?![0-9.])")


def _byte_needles(
    text: Mapping[str, int], uids: Mapping[str, int], encodings: tuple[str, ...]
) -> tuple[tuple[bytes, int, bool], ...]:
    needles: dict[bytes, tuple[int, bool]] = {}
    for needle, source in text.items():
        # bytes.lower folds ASCII only: "MÜLLER" in the data never met "müller". A needle with other letters
        # is also looked for as written in capitals, in small letters and capitalised, in every encoding
        # (an ASCII one's forms fold to the same bytes: not made at all, per instance).
        forms = (
            (needle,) if needle.isascii() else dict.fromkeys((needle, needle.upper(), needle.lower(), needle.title()))
        )
        for form in forms:
            for encoding in (*encodings, "utf-8", "latin-1"):
                try:
                    needles.setdefault(form.encode(encoding).lower(), (source, False))
                except (UnicodeEncodeError, LookupError):
                    continue
    for uid, source in uids.items():
        needles.setdefault(uid.encode("ascii", "replace"), (source, True))
    return tuple((needle, source, is_uid) for needle, (source, is_uid) in needles.items() if needle)


def _edges(data: bytes, start: int, end: int, inner: frozenset[int]) -> tuple[bool, bool]:
    """Whether a match is bounded before it, and after it."""
    return start == 0 or data[start - 1] not in inner, end >= len(data) or data[end] not in inner


@dataclass(frozen=True)
class ByteHits:
    sources: list[int]  # found as whole tokens
    suspect: bool  # some needle found whole at one edge only (`Identifiers.scan_bytes`)


_WORD_CHARS = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
_UID_CHARS = frozenset(b"0123456789.")
