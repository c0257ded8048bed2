"""What a leaf of the audit log commits to (pure): a record's canonical serialisation and its digest.

A record's digest is SHA-256 over canonical JSON (sorted keys, no spaces, UTF-8) of the record's fields
except `recorded_at`: a record delivered twice is built twice with two `recorded_at` times, and the
store keeps the first, so that field alone would make a faithful copy look altered. Which fields were
covered is kept beside the log as a named field set, so records written before a field was added to
AuditRecord still verify afterwards, and a field deleted from a stored record is caught, not skipped.

The leaf entry binds the digest to the record's `_id`, its position in the log and when the log
appended it; a leaf moved to another position no longer matches its own hash.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

import bson
import orjson
from bson.codec_options import CodecOptions
from bson.errors import BSONError

from services.audit.records import to_epoch_ms

EXCLUDED_FIELDS = frozenset({"recorded_at"})
_MISSING = {"$missing": True}


def _encode(value: Any) -> Any:
    if isinstance(value, datetime):
        return {"$date": to_epoch_ms(value)}
    if isinstance(value, bytes):
        return {"$bin": value.hex()}
    raise TypeError(f"no canonical form for {type(value).__name__}")


_ORJSON = orjson.OPT_SORT_KEYS | orjson.OPT_PASSTHROUGH_DATETIME


def canonical_json(value: Any) -> bytes:
    """Sorted keys, no spaces, UTF-8. orjson writes exactly the bytes of `json.dumps(sort_keys=True,
    separators=(",", ":"), ensure_ascii=False)` for strings, integers, booleans and null, what records
    and leaves hold (a test compares them), ten times faster, so every leaf already written keeps its
    hash; integers beyond 64 bits and lone surrogates go through json. (Floats would be written as
    orjson writes them: no record holds one.)"""
    try:
        return orjson.dumps(value, default=_encode, option=_ORJSON)
    except TypeError:
        pass  # orjson.JSONEncodeError: a value only json can write
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=_encode
    ).encode("utf-8")


def covered_fields(record: Mapping[str, Any]) -> tuple[str, ...]:
    return tuple(sorted(name for name in record if name not in EXCLUDED_FIELDS))


def field_set_id(names: Iterable[str]) -> str:
    return hashlib.sha256("\n".join(names).encode("utf-8")).hexdigest()[:16]


def record_digest(record: Mapping[str, Any], fields: Iterable[str]) -> bytes:
    """Digest of `record` over `fields`; a field the record lacks is encoded as missing, unlike None."""
    return hashlib.sha256(canonical_json({name: record.get(name, _MISSING) for name in fields})).digest()


_FIELDS_OF: dict[tuple[str, ...], tuple[str, ...]] = {}


def stored_form(record: Mapping[str, Any]) -> dict[str, Any]:
    """A record as the store keeps it: fields without a value are left out (a reader takes a missing
    field as None), which halves the fields FerretDB converts per record."""
    return {name: value for name, value in record.items() if value is not None}


PACKED = "r"  # the field of a stored record holding its other fields, one BSON document in one binary value
CONFLICT = "$conflict"  # a field both packed and beside the packed ones: never what was appended
_UTC: CodecOptions[dict[str, Any]] = CodecOptions(tz_aware=True)


def packed_form(record: Mapping[str, Any]) -> dict[str, Any]:
    """`stored_form` with every field but `_id` packed into one binary field (PACKED). FerretDB converts
    and indexes each field of a document it stores: a record of ~15 fields with values cost it about
    ~50 µs of database CPU (README, "Storage"), one binary field a fraction of that. The store keeps its
    own fields (`_b`, `_l`) beside it, unpacked, since it compares and sets them."""
    own = {name: value for name, value in record.items() if value is not None and name != "_id"}
    return {"_id": record["_id"], PACKED: bson.encode(own)}


def unpacked(doc: Mapping[str, Any]) -> dict[str, Any]:
    """A stored record with its packed fields among the others (one stored unpacked, as before packing,
    unchanged). A field found both packed and beside the packed ones becomes {CONFLICT: [beside, packed]},
    which matches no digest: a value set beside the packed ones is caught like a value changed. Bytes
    that do not decode are left as they are: the record then lacks its fields, also a mismatch."""
    out = dict(doc)
    packed = out.get(PACKED)
    if not isinstance(packed, bytes):
        return out
    try:
        fields = bson.decode(packed, codec_options=_UTC)
    except (BSONError, ValueError, TypeError):
        return out
    del out[PACKED]
    for name, value in fields.items():
        out[name] = value if name not in out else {CONFLICT: [out[name], value]}
    return out


def digest_of_own_fields(record: Mapping[str, Any]) -> tuple[tuple[str, ...], bytes]:
    """The field set and digest of the record's stored form (`stored_form`): the fields that have a
    value, except EXCLUDED_FIELDS; the same as `record_digest(record, those fields)`. The field tuple is
    worked out once per shape of record. Verification also requires every field outside the set to be
    empty (log_verify), so a value added to a stored record is caught like a value changed."""
    own = {name: value for name, value in record.items() if value is not None and name not in EXCLUDED_FIELDS}
    shape = tuple(own)
    fields = _FIELDS_OF.get(shape)
    if fields is None:
        fields = _FIELDS_OF.setdefault(shape, tuple(sorted(shape)))
    return fields, hashlib.sha256(canonical_json(own)).digest()


def leaf_entry(index: int, record_id: str, digest: bytes, field_set: str, appended_ms: int) -> bytes:
    """The bytes RFC 9162 calls the entry d(i): its leaf hash is SHA-256(0x00 || entry)."""
    return canonical_json({"d": digest.hex(), "f": field_set, "i": index, "id": record_id, "t": appended_ms})
