"""Read string values straight from an element's raw bytes, without pydicom's conversion.

Converting a raw element costs tens of microseconds (validation, value objects) and marks it as
changed, so it would be re-encoded on output. Decisions that only need to *look* at a value
(is this UID well known? what name tokens does this hold?) read the bytes instead.
"""

from __future__ import annotations

from pydicom import charset
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

DEFAULT_CODEC = "iso8859"
_ESCAPE = 0x1B


def codec_of(ds: Dataset, inherited: str | None = DEFAULT_CODEC) -> str | None:
    """The Python codec for ``ds``'s strings, or None when code extensions (ISO 2022) need pydicom."""
    if 0x00080005 not in ds:
        return inherited
    value = ds[0x00080005].value
    names = [str(v) for v in value] if isinstance(value, MultiValue | list) else [str(value or "")]
    if len(names) > 1:
        return None
    return charset.convert_encodings(names)[0]


def string_values(ds: Dataset, tag: int, codec: str | None) -> list[str]:
    """The element's values as stripped strings (empty values dropped)."""
    return element_string_values(ds, tag, ds.get_item(tag), codec)


def element_string_values(ds: Dataset, tag: int, raw: object, codec: str | None) -> list[str]:
    """``string_values`` for an element already looked up (``raw`` is ``ds.get_item(tag)``)."""
    if isinstance(raw, RawDataElement) and raw.value is not None and codec is not None and _ESCAPE not in raw.value:
        parts = raw.value.decode(codec, "replace").split("\\")
    else:
        value = ds[tag].value
        items = value if isinstance(value, MultiValue | list | tuple) else [value]
        parts = ["" if item is None else str(item) for item in items]
    return clean_values(parts)


def clean_values(parts: list[str]) -> list[str]:
    """Values as stripped, whitespace-collapsed strings; empty ones dropped."""
    return [" ".join(part.strip(" \x00").split()) for part in parts if part.strip(" \x00")]
