"""bytes → de-identified bytes: parse, check pixels, transform, record, encode, check for leaks."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

from pydicom import config, dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian

from .burned_in import mask_native, pixel_rule_for
from .container import (
    Parsed,
    Source,
    as_text,
    encode_for_scan,
    encode_full,
    encode_header,
    file_meta_for,
    parse,
    stream_of,
)
from .encoder import _LONG_HEADER
from .errors import BurnedInAnnotation, DeidError, NotDeidentifiable, PhiLeak, UndecodableInput
from .identifiers import Identifiers, collect_identifiers, is_registered_uid
from .leaks import Leak, find_leaks
from .method import record_method
from .pixel_rules import PixelRule
from .pixel_text import (
    embedded_text_of_element,
    embedded_text_of_value,
    without_text_segments,
    without_text_segments_of_element,
)
from .profile import Profile
from .pseudonyms import Pseudonymizer
from .raw_engine import deidentify_raw
from .rules import RuleSet
from .transform import AttributeChange, Context, read_un_as_known, transform
from .values import codec_of

Chunks = tuple[bytes | memoryview, ...]


@dataclass(frozen=True)
class DeidResult:
    """The released bytes and the identity of the instance as the recipient will see it.

    ``chunks`` are the file's parts in order (the fast path: the new header, then the input's Pixel
    Data element as a view): a writer can send them without joining half a megabyte first.
    """

    chunks: Chunks
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    modality: str
    patient_id: str
    pixels_cleaned: bool
    # The fast path's last chunk is the input itself from this offset to its end (its Pixel Data
    # element, untouched): a store may refer to those bytes instead of writing them again. None when
    # the last chunk is anything else (the pydicom path's output, or re-encoded data).
    source_offset: int | None = None

    @cached_property
    def data(self) -> bytes:
        """The whole de-identified file."""
        return self.chunks[0] if len(self.chunks) == 1 and isinstance(self.chunks[0], bytes) else b"".join(self.chunks)


def deidentify(
    data: Source, profile: Profile, key: bytes, before_whole_read: Callable[[Source], None] | None = None
) -> DeidResult:
    """De-identify one Part 10 instance for the recipient owning ``key``.

    ``data`` may be a read-only memory map of the file: the fast path reads its header only and
    the result's last chunk is a view of its pixel data (keep the map open until it is written).

    Deterministic: the same (data, profile, key) always gives the same bytes. Raises only
    DeidError subclasses for bad input (and ValueError for a key shorter than 16 bytes).

    The common encoding takes the fast path (raw_engine.py); whatever it does not cover, including
    every error and every possible leak, goes through the pydicom path, which decides and explains.
    That path reads the whole header into objects: `before_whole_read` may refuse an input first (raising a
    DeidError), one whose elements would take more memory than the process has.
    """
    pseudonyms = Pseudonymizer(key)  # raises ValueError for a short key
    try:
        fast = deidentify_raw(data, profile, pseudonyms)
    except Exception:  # Unsupported, or input the fast path did not expect: the pydicom path decides
        if before_whole_read is not None:
            before_whole_read(data)
        return _run(data, profile, key, None)
    identity = fast.identity
    return DeidResult(
        chunks=(fast.header, fast.pixel_bytes),
        study_instance_uid=identity["study_instance_uid"],
        series_instance_uid=identity["series_instance_uid"],
        sop_instance_uid=identity["sop_instance_uid"],
        sop_class_uid=identity["sop_class_uid"],
        transfer_syntax_uid=identity["transfer_syntax_uid"],
        modality=identity["modality"],
        patient_id=identity["patient_id"],
        pixels_cleaned=False,
        source_offset=len(data) - len(fast.pixel_bytes),  # raw_elements.read: Pixel Data to the end
    )


def deidentify_with_pydicom(data: Source, profile: Profile, key: bytes) -> DeidResult:
    """``deidentify`` without the fast path: the reference the fast path is tested against."""
    return _run(data, profile, key, None)


def preview(data: bytes, profile: Profile, key: bytes) -> list[AttributeChange]:
    """Every change ``deidentify`` makes, through the same code path, for administrators.

    The before/after values are the real values: show them to authorised users only, never log them.
    """
    changes: list[AttributeChange] = []
    _run(data, profile, key, changes)
    return changes


def _run(data: Source, profile: Profile, key: bytes, changes: list[AttributeChange] | None) -> DeidResult:
    pseudonyms = Pseudonymizer(key)
    rules = profile.rules
    # pydicom's value validation warns with the offending value in the message (PHI in logs);
    # values are this engine's business, and skipping validation is also faster.
    with config.disable_value_validation():
        return _run_unvalidated(data, profile, rules, pseudonyms, changes)


def _run_unvalidated(
    data: Source, profile: Profile, rules: RuleSet, pseudonyms: Pseudonymizer, changes: list[AttributeChange] | None
) -> DeidResult:
    try:
        parsed = parse(data)
        ds = parsed.dataset
        read_un_as_known(ds)
        rule = pixel_rule_for(ds, profile.pixel_rules, pixel_data_follows=bool(len(parsed.pixel_bytes)))
        identifiers = collect_identifiers(ds, rules)
        ctx = Context(rules, pseudonyms, identifiers, pseudonyms.day_shift(_shift_anchor(ds)), codec_of(ds), changes)
        transform(ds, ctx)
        record_method(ds, profile.name, profile.version, rules.options, rule is not None)
        media_uid = _media_uid(parsed, pseudonyms, rules.retain_uids)
        if rule is not None and parsed.transfer_syntax.is_compressed:
            output, scanned, meta = _decoded_and_masked(data, parsed, ds, rule, media_uid)
        else:
            meta = file_meta_for(ds, parsed.transfer_syntax, media_uid)
            output, scanned = _encode(parsed, ds, meta, rule)
        ds.file_meta = meta
        leaks = find_leaks(identifiers, scanned, ds) or _pixel_text_leaks(identifiers, parsed, ds, meta, output)
    except DeidError:
        raise
    except Exception as exc:  # never let a value-bearing message escape
        raise NotDeidentifiable(f"{type(exc).__name__} while de-identifying") from None
    if leaks:
        raise PhiLeak(leaks[0].tag, leaks[0].source)
    try:
        return DeidResult(
            chunks=output,
            study_instance_uid=as_text(ds.get("StudyInstanceUID", "")),
            series_instance_uid=as_text(ds.get("SeriesInstanceUID", "")),
            sop_instance_uid=as_text(ds.get("SOPInstanceUID", "")),
            sop_class_uid=as_text(ds.get("SOPClassUID", "")),
            transfer_syntax_uid=str(meta.TransferSyntaxUID),
            modality=as_text(ds.get("Modality", "")),
            patient_id=as_text(ds.get("PatientID", "")),
            pixels_cleaned=rule is not None,
        )
    except Exception as exc:  # an element no rule touched stays raw until read here: a damaged one (an unknown VR)
        raise UndecodableInput(type(exc).__name__) from None


def _pixel_text_leaks(
    identifiers: Identifiers, parsed: Parsed, ds: Dataset, meta: FileMetaDataset, output: Chunks
) -> list[Leak]:
    """Identifiers in the text segments of released compressed pixel data (pixel_text.py)."""
    if not UID(str(meta.TransferSyntaxUID)).is_compressed:
        return []
    if parsed.fast:
        text = embedded_text_of_element(output[-1], parsed.implicit)
    else:
        value = ds.get("PixelData")
        text = embedded_text_of_value(value) if isinstance(value, bytes) else b""
    return [Leak(PIXEL_DATA, source) for source in dict.fromkeys(identifiers.sources_in_bytes(text))] if text else []


PIXEL_DATA = 0x7FE00010


def _shift_anchor(ds: Dataset) -> str:
    """The per-patient day shift hangs on the original Patient ID (or the study, lacking one)."""
    for keyword in ("PatientID", "StudyInstanceUID"):
        value = ds.get(keyword)
        # Spaces and NULs are padding, as the fast path reads them (raw_engine._top_text): "\0PID1 " and
        # "PID1" are one patient, and an ID of padding alone is none.
        text = str(value).strip(" \x00").strip() if value else ""  # as raw_engine: _top_text, then strip
        if text:
            return f"{keyword}:{text}"
    return ""


def _media_uid(parsed: Parsed, pseudonyms: Pseudonymizer, retain_uids: bool) -> str:
    uid = parsed.media_sop_instance_uid
    if retain_uids or not uid or is_registered_uid(uid):
        return uid
    return pseudonyms.uid(uid)


def _encode(parsed: Parsed, ds: Dataset, meta: FileMetaDataset, rule: PixelRule | None) -> tuple[Chunks, bytes]:
    """The output file's chunks and the header bytes to scan for leaks."""
    if parsed.fast:
        pixels: bytes | memoryview = parsed.pixel_bytes
        if rule is not None:
            pixels = _masked_element(parsed, ds, rule)
        elif (stripped := without_text_segments_of_element(pixels, parsed.implicit)) is not None:
            pixels = stripped
            _drop_extended_offsets(ds)
        header = encode_header(ds, meta, parsed.implicit)
        return (header, pixels), header
    if rule is not None:
        ds.PixelData = _masked_value(parsed, ds, rule)
    elif isinstance(value := ds.get("PixelData"), bytes) and (stripped := without_text_segments(value)) is not None:
        ds.PixelData = stripped
        _drop_extended_offsets(ds)
    return (encode_full(ds, meta),), encode_for_scan(ds)


def _drop_extended_offsets(ds: Dataset) -> None:
    """The Extended Offset Table, its lengths and the value's total length (optional, PS3.3 C.7.6.3) no
    longer match fragments whose text segments went: removed."""
    for tag in (0x7FE00001, 0x7FE00002, 0x7FE00003):
        if tag in ds:
            del ds[tag]


def _decoded_and_masked(
    data: Source, parsed: Parsed, ds: Dataset, rule: PixelRule, media_uid: str
) -> tuple[Chunks, bytes, FileMetaDataset]:
    """Compressed pixel data with burned-in text: decode it (pydicom's decoders: RLE natively, JPEG
    and JPEG 2000 through Pillow), mask it, and release it uncompressed (explicit VR little endian).

    Re-compressing lossy data would lose more; uncompressed is valid for every IOD. Pixel data no
    installed decoder can read cannot be cleaned, so it is refused as burned-in.
    """
    try:
        full = dcmread(stream_of(data))
        full.decompress(generate_instance_uid=False)
    except Exception:  # no decoder for this syntax, or damaged fragments; messages may quote values
        raise BurnedInAnnotation("compressed pixel data that no installed decoder can read") from None
    pixels = bytearray(full.PixelData)
    mask_native(pixels, 0, full, rule.regions)
    if len(pixels) % 2:
        pixels += b"\x00"
    for tag in (PHOTOMETRIC_INTERPRETATION, PLANAR_CONFIGURATION):  # decoding may turn YBR into RGB
        if tag in full:
            ds[tag] = full[tag]
        elif tag in ds:
            del ds[tag]
    vr = "OB" if int(full.get("BitsAllocated") or 8) <= 8 else "OW"
    meta = file_meta_for(ds, ExplicitVRLittleEndian, media_uid)
    # The masked pixels go last, alone: `ds` still holds the original (unmasked) Pixel Data when the input
    # had an element after it (trailing padding, a signature) and was read whole, and it was written
    # into the header, before the masked copy. What follows Pixel Data has no place after it either.
    for tag in [element.tag for element in ds if element.tag >= PIXEL_DATA]:
        del ds[tag]
    header = encode_header(ds, meta, implicit=False)
    element = _LONG_HEADER(0x7FE0, 0x0010, vr.encode("ascii"), 0, len(pixels))
    return (header, element, memoryview(pixels)), header, meta


PHOTOMETRIC_INTERPRETATION, PLANAR_CONFIGURATION = 0x00280004, 0x00280006


def _masked_element(parsed: Parsed, ds: Dataset, rule: PixelRule) -> bytes:
    element = bytearray(parsed.pixel_bytes)
    mask_native(element, 8 if parsed.implicit else 12, ds, rule.regions)
    return bytes(element)


def _masked_value(parsed: Parsed, ds: Dataset, rule: PixelRule) -> bytes:
    value = bytearray(ds.PixelData)
    mask_native(value, 0, ds, rule.regions)
    return bytes(value)
