"""Receiving partners. Each has its own topic and its own pseudonymisation secret, so two partners'
de-identified copies cannot be linked (the secret never leaves MongoDB and the deid service).

A partner may give an endpoint (a gateway target URL: dicom://, https://, file://): imx's central
gateway then receives for it (services/gateway/central.py). DICOMweb keys have a kind: the
partner's own ("partner", issued by `imx partners add` / `reset-key`) and the central gateway's
("central"); issuing a key replaces only the earlier keys of the same kind, so neither revokes
the other."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Any

from pymongo.database import Database

from services.common.api_keys import api_key_digest, issue_api_key
from services.common.display_names import validate_display_name
from services.common.topics import validate_partner_id

DICOMWEB_KEY_PREFIX = "imxp_"
RETIRED_PARTNERS = "retired_partner_ids"  # ids of removed partners: never given again
PARTNER_KEY = "partner"  # the key the partner's own gateway uses
CENTRAL_KEY = "central"  # the key imx's central gateway uses on the partner's behalf


@dataclass(frozen=True)
class Partner:
    partner_id: str
    name: str = ""
    endpoint: str = ""  # where the central gateway stores for it; "" = the partner runs its own gateway


def validate_partner(partner: Partner) -> Partner:
    validate_partner_id(partner.partner_id)
    validate_display_name(partner.name, "partner")
    return partner


class PartnerStore:
    def __init__(self, db: Database) -> None:
        self._partners = db["partners"]
        # digest of a partner's DICOMweb key -> partner id: checking a key is one _id lookup.
        self._keys = db["partner_keys"]
        self._retired = db[RETIRED_PARTNERS]

    def add(self, partner: Partner) -> Partner:
        """Create or update name and endpoint; the pseudonymisation key is made once and kept on later
        updates."""
        validate_partner(partner)
        self._partners.update_one(
            {"_id": partner.partner_id},
            {
                "$set": {"name": partner.name, "endpoint": partner.endpoint},
                "$setOnInsert": {"pseudonym_key": secrets.token_hex(32)},
            },
            upsert=True,
        )
        return partner

    def remove(self, partner_id: str) -> bool:
        """Retire the partner's id (`retired`), then remove the partner and its keys: retired first, so
        an interrupted removal, tried again, finds the id retired though the partner is gone."""
        if self._partners.count_documents({"_id": partner_id}, limit=1) == 1:
            self.retire(partner_id)
        self._keys.delete_many({"partner_id": partner_id})
        return self._partners.delete_one({"_id": partner_id}).deleted_count == 1

    def retire(self, partner_id: str) -> None:
        """Mark the id as one never given again (kept: when it was first marked)."""
        self._retired.update_one(
            {"_id": partner_id}, {"$setOnInsert": {"removed_at_ms": int(time.time() * 1000)}}, upsert=True
        )

    def retired(self, partner_id: str) -> bool:
        """Whether the id belonged to a partner since removed. It is not given again: whoever held it next
        would read the old partner's deliveries (DICOMweb), its feed references (signed for the id) and
        what is left on its topics."""
        return self._retired.count_documents({"_id": partner_id}, limit=1) == 1

    def retired_ids(self) -> set[str]:
        return {str(doc["_id"]) for doc in self._retired.find({}, {"_id": 1})}

    def issue_dicomweb_key(self, partner_id: str, kind: str = PARTNER_KEY) -> str:
        """A new DICOMweb key for the partner (shown once); its earlier keys of the same kind stop
        working. Keys stored before kinds existed count as the partner's own."""
        key = issue_api_key(DICOMWEB_KEY_PREFIX)
        if kind == PARTNER_KEY:
            # $ne also matches documents without the field (the keys from before kinds).
            self._keys.delete_many({"partner_id": partner_id, "kind": {"$ne": CENTRAL_KEY}})
        else:
            self._keys.delete_many({"partner_id": partner_id, "kind": kind})
        self._keys.insert_one({"_id": api_key_digest(key), "partner_id": partner_id, "kind": kind})
        return key

    def has_own_key(self, partner_id: str) -> bool:
        """Whether the partner has a DICOMweb key of its own (not only the central gateways')."""
        return self._keys.find_one({"partner_id": partner_id, "kind": {"$ne": CENTRAL_KEY}}, {"_id": 1}) is not None

    def partner_for_key(self, api_key: str) -> str | None:
        """The partner a DICOMweb key belongs to, or None."""
        doc = self._keys.find_one({"_id": api_key_digest(api_key)})
        return str(doc["partner_id"]) if doc else None

    def get(self, partner_id: str) -> Partner | None:
        doc = self._partners.find_one({"_id": partner_id}, {"name": 1, "endpoint": 1})
        return _partner(doc) if doc else None

    def list(self) -> list[Partner]:
        return [_partner(doc) for doc in self._partners.find({}, {"name": 1, "endpoint": 1}).sort("_id", 1)]

    def pseudonym_key(self, partner_id: str) -> bytes | None:
        doc = self._partners.find_one({"_id": partner_id}, {"pseudonym_key": 1})
        return bytes.fromhex(doc["pseudonym_key"]) if doc else None


def _partner(doc: dict[str, Any]) -> Partner:
    return Partner(doc["_id"], doc.get("name", ""), doc.get("endpoint") or "")
