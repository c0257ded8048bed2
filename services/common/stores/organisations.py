"""Sending organisations: their calling AE titles (C-STORE), the networks those may call from, and API
keys (STOW-RS, imx send).

API keys are stored as SHA-256 digests only; the key itself is shown once, when issued.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from ipaddress import ip_address

from pymongo.database import Database

from services.common import api_keys
from services.common.display_names import validate_display_name
from services.common.ip_networks import Network, network_of, peer_address, stored_networks
from services.common.messages import shown

_ORG_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}\Z")
_AE_TITLE = re.compile(r"^[\x21-\x7e]([\x20-\x7e]{0,14}[\x21-\x7e])?\Z")
# Each is a lookup key for every association; a site with more sends through a gateway, not this list.
MAX_AE_TITLES = 1000
MAX_NETWORKS = 100


@dataclass(frozen=True)
class Organisation:
    org_id: str
    name: str = ""
    ae_titles: tuple[str, ...] = field(default_factory=tuple)
    # Where its C-STOREs may come from (CIDR, e.g. 10.20.0.0/16); none: anywhere. An AE title is sent in
    # the clear and anyone who learns it can send as the organisation; a network binds it to the site.
    dicom_from: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class CallingOrg:
    """What a calling AE title stands for: its organisation, and the networks it may call from."""

    org_id: str
    networks: tuple[Network, ...] = ()

    def admits(self, address: str) -> bool:
        """Whether a C-STORE from `address` (the peer's IP) may be its organisation's."""
        if not self.networks:
            return True
        try:
            ip = ip_address(peer_address(address))
        except ValueError:
            return False
        return any(ip in network for network in self.networks)


def is_organisation_id(text: str) -> bool:
    return _ORG_ID.match(text) is not None


def validate_organisation(org: Organisation) -> Organisation:
    if not is_organisation_id(org.org_id):
        raise ValueError("organisation id must be 1-63 characters of lower-case letters, digits and '-'")
    validate_display_name(org.name, "organisation")
    if len(org.ae_titles) > MAX_AE_TITLES:
        raise ValueError(f"{len(org.ae_titles)} AE titles given; an organisation has at most {MAX_AE_TITLES}")
    for ae in org.ae_titles:
        if not _AE_TITLE.match(ae) or "\\" in ae:
            raise ValueError(f"AE title {shown(ae)} is not valid (1-16 printable characters, no backslash)")
    if len(org.dicom_from) > MAX_NETWORKS:
        raise ValueError(f"{len(org.dicom_from)} networks given; an organisation has at most {MAX_NETWORKS}")
    networks = tuple(dict.fromkeys(str(network_of(n)) for n in org.dicom_from))
    return Organisation(org.org_id, org.name, org.ae_titles, networks)


class OrganisationStore:
    def __init__(self, db: Database) -> None:
        self._orgs = db["organisations"]
        self._orgs.create_index("api_key_sha256")

    def add(self, org: Organisation, issue_api_key: bool = False) -> str:
        """Create or replace; returns a newly issued API key, or "" when none was asked for."""
        org = validate_organisation(org)
        for ae in org.ae_titles:
            clash = self._orgs.find_one({"ae_titles": ae, "_id": {"$ne": org.org_id}})
            if clash:
                raise ValueError(f"AE title {shown(ae)} already belongs to organisation {clash['_id']!r}")
        update: dict[str, object] = {
            "name": org.name,
            "ae_titles": list(org.ae_titles),
            "dicom_from": list(org.dicom_from),
        }
        api_key = ""
        if issue_api_key:
            api_key = api_keys.issue_api_key("imx_")
            update["api_key_sha256"] = api_keys.api_key_digest(api_key)
        self._orgs.update_one({"_id": org.org_id}, {"$set": update}, upsert=True)
        return api_key

    def remove(self, org_id: str) -> bool:
        return self._orgs.delete_one({"_id": org_id}).deleted_count == 1

    def list(self) -> list[Organisation]:
        return [
            Organisation(
                doc["_id"], doc.get("name", ""), tuple(doc.get("ae_titles", [])), tuple(doc.get("dicom_from", []))
            )
            for doc in self._orgs.find().sort("_id", 1)
        ]

    def org_for_api_key(self, api_key: str) -> str | None:
        doc = self._orgs.find_one({"api_key_sha256": api_keys.api_key_digest(api_key)}, {"_id": 1})
        return doc["_id"] if doc else None

    def calling_aes(self) -> dict[str, CallingOrg]:
        """Every calling AE title, with its organisation and the networks it may call from."""
        found: dict[str, CallingOrg] = {}
        for doc in self._orgs.find({}, {"ae_titles": 1, "dicom_from": 1}):
            caller = CallingOrg(doc["_id"], stored_networks(doc.get("dicom_from", [])))
            found.update(dict.fromkeys(doc.get("ae_titles", []), caller))
        return found

    def exists(self, org_id: str) -> bool:
        return self._orgs.count_documents({"_id": org_id}, limit=1) == 1
