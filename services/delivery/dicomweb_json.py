"""The DICOM JSON (PS3.18 Annex F) a partner gets: QIDO-RS results built from what it was sent
(`DeliveredObjects`, no file read) and WADO-RS metadata read from each object's header only.
Also the check every UID from a request path passes before it is used."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import pydicom
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset

from services.delivery.delivered import DeliveredInstance

log = logging.getLogger(__name__)

# Elements whose value is larger than this are bulk data, left out of metadata (no BulkDataURI is
# served). Pixel data is never even read: dcmread stops before it.
BULK_DATA_THRESHOLD = 1024
_LEFT_OUT = "imx:left-out"

Json = dict[str, Any]


def _attr(vr: str, *values: object) -> Json:
    return {"vr": vr, "Value": list(values)} if values else {"vr": vr}


def _retrieve_url(base: str, *path: str) -> str:
    return base + "".join(
        f"/{segment}/{uid}" for segment, uid in zip(("studies", "series", "instances"), path, strict=False)
    )


def study_result(study_uid: str, instances: Sequence[DeliveredInstance], base: str) -> Json:
    """One study as a QIDO-RS result (PS3.18 Table 10.6.3-3, the attributes this server knows)."""
    modalities = sorted({i.modality for i in instances if i.modality})
    return {
        "00080061": _attr("CS", *modalities),
        "00081190": _attr("UR", _retrieve_url(base, study_uid)),
        "0020000D": _attr("UI", study_uid),
        "00201206": _attr("IS", len({i.series_uid for i in instances})),
        "00201208": _attr("IS", len(instances)),
    }


def series_result(study_uid: str, series_uid: str, instances: Sequence[DeliveredInstance], base: str) -> Json:
    modality = next((i.modality for i in instances if i.modality), "")
    result = {
        "00080060": _attr("CS", modality) if modality else _attr("CS"),
        "00081190": _attr("UR", _retrieve_url(base, study_uid, series_uid)),
        "0020000D": _attr("UI", study_uid),
        "0020000E": _attr("UI", series_uid),
        "00201209": _attr("IS", len(instances)),
    }
    return result


def instance_result(item: DeliveredInstance, base: str) -> Json:
    return {
        "00080016": _attr("UI", item.sop_class_uid) if item.sop_class_uid else _attr("UI"),
        "00080018": _attr("UI", item.sop_uid),
        "00080060": _attr("CS", item.modality) if item.modality else _attr("CS"),
        "00081190": _attr("UR", _retrieve_url(base, item.study_uid, item.series_uid, item.sop_uid)),
        "00083002": _attr("UI", item.transfer_syntax_uid) if item.transfer_syntax_uid else _attr("UI"),
        "0020000D": _attr("UI", item.study_uid),
        "0020000E": _attr("UI", item.series_uid),
    }


def by_series(instances: Iterable[DeliveredInstance]) -> dict[str, list[DeliveredInstance]]:
    """Instances grouped by series UID, series in UID order."""
    groups: dict[str, list[DeliveredInstance]] = {}
    for item in sorted(instances, key=lambda i: (i.series_uid, i.sop_uid)):
        groups.setdefault(item.series_uid, []).append(item)
    return groups


# QIDO-RS matching keys this server answers (exact match; PS3.18 §8.3.4.1), by keyword and tag.
MATCH_KEYS: Mapping[str, str] = {
    "StudyInstanceUID": "study_uid",
    "0020000D": "study_uid",
    "SeriesInstanceUID": "series_uid",
    "0020000E": "series_uid",
    "SOPInstanceUID": "sop_uid",
    "00080018": "sop_uid",
    "SOPClassUID": "sop_class_uid",
    "00080016": "sop_class_uid",
    "Modality": "modality",
    "00080060": "modality",
    "ModalitiesInStudy": "modality",
    "00080061": "modality",
}
# Query parameters that change nothing here: every known attribute is always returned.
IGNORED_PARAMS = frozenset({"includefield", "fuzzymatching"})


def wanted_values(value: str) -> frozenset[str]:
    """A matching key's values: one, or a list (PS3.18 8.3.4.1's UID list matching separates UIDs by
    commas, DICOM's value multiplicity by backslashes; neither character is in a UID or a modality)."""
    return frozenset(v.strip() for v in value.replace(",", "\\").split("\\") if v.strip())


def matches(item: DeliveredInstance, criteria: Mapping[str, frozenset[str]]) -> bool:
    """Exact match on every criterion (field name -> the values wanted, any of them)."""
    return all(str(getattr(item, name)) in wanted for name, wanted in criteria.items())


# JSON has no NaN or infinity (json.dumps wrote bare `NaN`, and a strict partner refused the whole
# study's metadata): FL and FD carry them as these strings (as the DICOM JSON model's implementations do),
# any other VR as an empty value (DS is a decimal string: "NaN" is not one).
_NON_FINITE_TEXT = {"nan": "NaN", "inf": "inf", "-inf": "-inf"}
_FLOAT_VRS = frozenset({"FL", "FD"})


def _json_value(vr: str, value: Any) -> Any:
    if not isinstance(value, float) or math.isfinite(value):
        return value
    return _NON_FINITE_TEXT[str(value)] if vr in _FLOAT_VRS else None


def _strip_left_out(node: Json) -> Json:
    """The data set's JSON without the attributes left out, and with values JSON can hold."""
    kept: Json = {}
    for tag, attribute in node.items():
        if attribute.get("BulkDataURI") == _LEFT_OUT:
            continue
        values = attribute.get("Value")
        if attribute.get("vr") == "SQ" and values is not None:
            attribute = {**attribute, "Value": [_strip_left_out(item) for item in values]}
        elif values and any(isinstance(v, float) and not math.isfinite(v) for v in values):
            attribute = {**attribute, "Value": [_json_value(attribute["vr"], v) for v in values]}
        kept[tag] = attribute
    return kept


# The VRs whose values metadata leaves out (as bulk data) when over the threshold: anything else deferred
# for its size (a sequence, a long text) is read and kept, as before the deferral.
_BULK_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})


def _vr_of(raw: RawDataElement) -> str:
    if raw.VR:
        return str(raw.VR)
    try:
        return str(dictionary_VR(raw.tag))
    except KeyError:  # a private or unknown tag in implicit VR: its bytes are opaque
        return "UN"


def _drop_deferred(dataset: Dataset) -> None:
    """Remove the top-level bulk elements whose values were deferred (left unread for their size)."""
    for tag in list(dataset.keys()):
        raw = dataset.get_item(tag, keep_deferred=True)
        if not isinstance(raw, RawDataElement) or raw.value is not None or raw.length <= BULK_DATA_THRESHOLD:
            continue
        if any(vr in _BULK_VRS for vr in _vr_of(raw).split(" or ")):  # "OB or OW", "US or OW": either way
            del dataset[tag]


def header_json(source: Path | BinaryIO) -> Json | None:
    """The object's data set as DICOM JSON, bulk data left out; None when the file cannot be parsed.
    Reads the header only (stop_before_pixels), so a 1 GiB object costs what its header costs."""
    try:
        # Values over the bulk threshold are not read (deferred, then dropped unread): an encapsulated
        # document or a model of hundreds of MiB was read whole for each metadata request. (A deflated
        # object is still inflated whole by pydicom: bounded by ingest's IMX_MAX_INFLATED_BYTES only.)
        dataset = pydicom.dcmread(source, stop_before_pixels=True, defer_size=BULK_DATA_THRESHOLD)
        _drop_deferred(dataset)
        node: Json = dataset.to_json_dict(
            bulk_data_threshold=BULK_DATA_THRESHOLD, bulk_data_element_handler=lambda _element: _LEFT_OUT
        )
    except Exception as error:  # pydicom raises many types on a damaged header (BytesLengthException, ...)
        # The type only: a parser's message may quote header values. Raised, it ended a study's metadata
        # mid-body after its 200 was sent: JSON cut off, the other instances' metadata lost.
        log.warning("metadata unreadable", extra={"reason": type(error).__name__})
        return None
    return _strip_left_out(node)


def metadata_for(item: DeliveredInstance, source: Path | BinaryIO | None) -> Json:
    """Metadata of one delivered object: its header, or (unreadable or gone: None) the identifiers on
    record."""
    header = None if source is None else header_json(source)
    if header is None:
        return {
            "00080016": _attr("UI", item.sop_class_uid) if item.sop_class_uid else _attr("UI"),
            "00080018": _attr("UI", item.sop_uid),
            "0020000D": _attr("UI", item.study_uid),
            "0020000E": _attr("UI", item.series_uid),
        }
    return header
