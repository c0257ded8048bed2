"""The last check before release: no identifying value of the original may survive.

Two views of the output are searched for the original's identifiers (identifiers.py): the encoded
header bytes (everything but pixel data, so nothing escapes because of how it is encoded: private
blocks, unknown VRs, nested sequences) and, only when the bytes match, the decoded dataset, to say
in which element. Hits are reported by tag, never by value.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from io import BytesIO

from pydicom import dcmread
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from .identifiers import Identifiers, collect_identifiers
from .profile import Profile

# Attributes whose whole value this engine writes at the top level of every output (PS3.15 E.1.1 and E.3.6
# records), items included: a patient called "Clean" must not turn "Clean Descriptors Option" into a
# leak. Only there: a sender's copy nested in a kept sequence is the sender's words.
OWN_ATTRIBUTES = frozenset({0x00120062, 0x00120063, 0x00120064})
# Written by the engine under a longitudinal option only; otherwise a sender's value may stand there.
LONGITUDINAL_MODIFIED, LONGITUDINAL_TERMS = 0x00280303, frozenset({"MODIFIED", "UNMODIFIED", "REMOVED"})


@dataclass(frozen=True)
class Leak:
    tag: int | None  # where it was found in the output (None: only in the encoded bytes)
    source: int  # the original attribute whose value it is


def find_leaks(identifiers: Identifiers, header_bytes: bytes | memoryview, output: Dataset) -> list[Leak]:
    """Leaks of ``identifiers`` into an output whose encoded header (no pixel data) is ``header_bytes``.
    A needle the bytes show whole at one edge only (a value's end is followed by a tag's bytes) is looked
    for element by element, and is a leak only if found there."""
    byte_hits = identifiers.scan_bytes(header_bytes)
    if not byte_hits.sources and not byte_hits.suspect:
        return []
    located = list(_locate(output, identifiers))
    leaks = [leak for leak, own in located if not own]
    if leaks:
        return list(dict.fromkeys(leaks))
    # Found in the bytes but in no element: a leak, unless only in what the engine itself wrote.
    explained = {leak.source for leak, _own in located}
    return [Leak(None, source) for source in dict.fromkeys(byte_hits.sources) if source not in explained]


def check_for_leaks(
    original_header: Dataset, output_bytes: bytes, output_dataset: Dataset, profile: Profile
) -> list[Leak]:
    """Stand-alone form: compare any original header with any output file under ``profile``."""
    identifiers = collect_identifiers(original_header, profile.rules)
    stream = BytesIO(output_bytes)
    dcmread(stream, stop_before_pixels=True)
    return find_leaks(identifiers, memoryview(output_bytes)[: stream.tell()], output_dataset)


def _locate(ds: Dataset, identifiers: Identifiers) -> Iterator[tuple[Leak, bool]]:
    """Each needle found in an element, and whether in one the engine wrote itself (OWN_ATTRIBUTES, with
    their items: the method's code sequence names "Basic Application Confidentiality Profile")."""
    meta = getattr(ds, "file_meta", None)
    if meta is not None:
        yield from _locate_in(meta, identifiers, own=False)
    for elem in ds:
        yield from _locate_in_element(elem, identifiers, own=_engine_written(elem))


def _engine_written(elem: DataElement) -> bool:
    """A top-level element whose value the engine wrote."""
    tag = int(elem.tag)
    return tag in OWN_ATTRIBUTES or (tag == LONGITUDINAL_MODIFIED and str(elem.value).strip() in LONGITUDINAL_TERMS)


def _locate_in(ds: Dataset, identifiers: Identifiers, own: bool) -> Iterator[tuple[Leak, bool]]:
    for elem in ds:
        yield from _locate_in_element(elem, identifiers, own)


def _locate_in_element(elem: DataElement, identifiers: Identifiers, own: bool) -> Iterator[tuple[Leak, bool]]:
    if elem.VR == "SQ":
        for item in elem.value or ():
            yield from _locate_in(item, identifiers, own)
        return
    for text in _texts(elem.value):
        for source in identifiers.sources_in_text(text):
            yield Leak(int(elem.tag), source), own


def _texts(value: object) -> list[str]:
    items = value if isinstance(value, MultiValue | list | tuple) else [value]
    texts = []
    for item in items:
        if isinstance(item, bytes):
            texts.append(item.decode("latin-1"))
        elif item is not None:
            texts.append(str(item))
    return texts
