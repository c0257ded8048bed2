"""Burned-in annotation: refuse pixel data that may show identifying text, unless a rule cleans it.

PS3.15 E.3.1 (Clean Pixel Data Option): the header cannot vouch for the pixels. Ultrasound,
secondary capture and projection radiography (DX, CR) often carry names and dates in the image, so
they are treated as annotated unless Burned In Annotation (0028,0301) explicitly says NO. Masks are
applied straight to uncompressed pixel bytes; compressed pixel data with burned-in text is refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

import numpy as np
from pydicom.dataset import Dataset

from .container import as_text
from .errors import BurnedInAnnotation, NotDeidentifiable
from .pixel_rules import PixelRule, Region, matching_rule

RISKY_MODALITIES = frozenset({"US", "DX", "CR"})
SECONDARY_CAPTURE_PREFIX = "1.2.840.10008.5.1.4.1.1.7"  # SC Image Storage and its multi-frame kinds
_DTYPES: Mapping[int, np.dtype] = MappingProxyType({8: np.dtype("u1"), 16: np.dtype("<u2"), 32: np.dtype("<u4")})


def may_have_burned_in_text(ds: Dataset, pixel_data_follows: bool = False) -> bool:
    """`pixel_data_follows`: the header was read without the pixel data (container.parse's fast read),
    which is there: an image without Rows was otherwise taken for none, and released unchecked."""
    if not (pixel_data_follows or any(tag in ds for tag in (0x7FE00010, 0x7FE00008, 0x7FE00009)) or "Rows" in ds):
        return False  # no image (e.g. structured reports)
    said = flag_says(as_text(ds.get("BurnedInAnnotation", "")))
    if said is not None:
        return said
    return risky_source(as_text(ds.get("Modality", "")), as_text(ds.get("SOPClassUID", "")))


# Both engine paths judge an image by these two, from its values as pydicom reads them (trailing padding
# dropped), so they agree byte for byte.


def flag_says(flag: str) -> bool | None:
    """Burned In Annotation's answer: True (YES), False (NO), None (absent or anything else). A leading
    NUL is no padding (PS3.5 6.2): "\0NO" is not a NO, so the image is checked."""
    said = flag.rstrip(" \x00").strip().upper()
    return True if said == "YES" else False if said == "NO" else None


def risky_source(modality: str, sop_class: str) -> bool:
    """A modality that often burns text in, or a secondary capture; padding either side dropped, so a
    padded "US" is still an ultrasound, and any one of several values counts ("CT\\US": its Python list
    text was no risky modality, and such an ultrasound was released unchecked)."""
    if any(value.strip(" \x00").strip().upper() in RISKY_MODALITIES for value in modality.split("\\")):
        return True
    return any(value.strip(" \x00").strip().startswith(SECONDARY_CAPTURE_PREFIX) for value in sop_class.split("\\"))


def pixel_rule_for(ds: Dataset, rules: tuple[PixelRule, ...], pixel_data_follows: bool = False) -> PixelRule | None:
    """The rule that cleans this instance, None when it needs none; raises when it needs one."""
    if not may_have_burned_in_text(ds, pixel_data_follows):
        return None
    rule = matching_rule(rules, ds)
    if rule is None:
        raise BurnedInAnnotation("no pixel-clean rule matches this device")
    return rule


def mask_native(pixels: bytearray, offset: int, ds: Dataset, regions: tuple[Region, ...]) -> None:
    """Zero ``regions`` in every frame of uncompressed pixel data stored at ``pixels[offset:]``."""
    rows, columns = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
    bits = int(ds.get("BitsAllocated") or 0)
    samples = int(ds.get("SamplesPerPixel") or 1)
    frames = int(ds.get("NumberOfFrames") or 1)
    planar = int(ds.get("PlanarConfiguration") or 0)
    dtype = _DTYPES.get(bits)
    if dtype is None or rows <= 0 or columns <= 0:
        raise NotDeidentifiable("pixel-clean rule needs 8, 16 or 32 bit pixel data")
    if not any(region.x < columns and region.y < rows for region in regions):
        # Nothing would be masked (numpy clips a region past the edge to nothing), yet the copy would say
        # its pixels were cleaned: refused as burned-in, as pixels no rule covers are.
        raise BurnedInAnnotation("no region of the pixel rule lies within the image")
    count = frames * rows * columns * samples
    size = count * dtype.itemsize
    if len(pixels) - offset < size:
        raise NotDeidentifiable("pixel data shorter than its attributes say")
    flat = np.frombuffer(memoryview(pixels)[offset : offset + size], dtype=dtype)
    if planar == 1 and samples > 1:
        image = flat.reshape(frames, samples, rows, columns)
        for region in regions:
            image[:, :, region.y : region.y + region.height, region.x : region.x + region.width] = 0
    else:
        image = flat.reshape(frames, rows, columns, samples)
        for region in regions:
            image[:, region.y : region.y + region.height, region.x : region.x + region.width, :] = 0
