"""Topic names. One place builds them so a prefix (per deployment or per test) applies everywhere."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from services.common.messages import shown

_PARTNER_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}\Z")
# A partner id is also its Kafka user and its groups' prefix ("<id>."): "imx…" names the services' users
# ("imx-delivery") and groups ("imx-central-gateway.<partner>"), "admin" the devstack's and compose's super
# user. Given to a new partner, such an id took over that user's password and ACLs. Refused when a
# partner is added (`validate_new_partner_id`), not wherever an id is read: one given before stays usable.
_RESERVED_PARTNER_ID = re.compile(r"^(imx|admin\Z)")
RESERVED_PARTNER_ID_RULE = (
    "a new partner id may not be 'admin' or begin 'imx' (the system's own Kafka users and groups)"
)

# Priority lanes, most urgent first. After routing every stage's input and output is one topic per lane
# (`imx.routed.v1` is the routine lane, `imx.routed.urgent.v1` and `imx.routed.bulk.v1` the others), so a
# consumer can stop reading a lower lane while a higher one has a backlog (services/common/lanes.py).
LANES = ("urgent", "routine", "bulk")
ROUTINE = "routine"


PARTNER_ID_RULE = (
    "partner id must be 1-63 characters of lower-case letters, digits and '-', starting with a letter or digit"
)


def validate_partner_id(partner_id: str) -> str:
    """Partner ids become topic names, so they are restricted to a safe alphabet."""
    if not _PARTNER_ID.match(partner_id):
        raise ValueError(f"{PARTNER_ID_RULE} (got {shown(partner_id)})")
    return partner_id


def is_reserved_partner_id(partner_id: str) -> bool:
    """One of the system's own Kafka names, which no new partner may take."""
    return bool(_RESERVED_PARTNER_ID.match(partner_id))


def validate_new_partner_id(partner_id: str) -> str:
    """`validate_partner_id`, and none of the system's own Kafka names (a partner id is its Kafka user)."""
    validate_partner_id(partner_id)
    if is_reserved_partner_id(partner_id):
        raise ValueError(f"{RESERVED_PARTNER_ID_RULE} (got {shown(partner_id)})")
    return partner_id


@dataclass(frozen=True)
class Topics:
    prefix: str = ""

    def _name(self, name: str) -> str:
        return f"{self.prefix}imx.{name}.v1"

    @property
    def ingested(self) -> str:
        return self._name("ingested")

    @property
    def routed(self) -> str:
        return self._name("routed")

    @property
    def prepared(self) -> str:
        return self._name("prepared")

    @property
    def outcomes(self) -> str:
        return self._name("outcomes")

    @property
    def quarantine(self) -> str:
        return self._name("quarantine")

    @property
    def dead_letter(self) -> str:
        return self._name("deadletter")

    @property
    def access(self) -> str:
        """Partners' DICOMweb retrievals (PartnerRetrieval), for audit."""
        return self._name("access")

    @property
    def alerts(self) -> str:
        """Security alerts raised by the services (SecurityAlert), for audit."""
        return self._name("alerts")

    def partner(self, partner_id: str) -> str:
        """The partner's routine feed; `partner_lanes` names all three."""
        return self._name(f"partner.{validate_partner_id(partner_id)}")

    @staticmethod
    def lane(topic: str, lane: str) -> str:
        """The `lane` of a laned topic named by its routine lane: imx.routed.v1 → imx.routed.urgent.v1."""
        if lane not in LANES:
            raise ValueError(f"lane must be one of {', '.join(LANES)} (got {lane!r})")
        if lane == ROUTINE:
            return topic
        if not topic.endswith(".v1"):
            raise ValueError(f"not a versioned topic name: {topic!r}")
        return f"{topic[:-3]}.{lane}.v1"

    @staticmethod
    def lanes_of(topic: str) -> list[str]:
        """Every lane of a laned topic named by its routine lane, most urgent first."""
        return [Topics.lane(topic, lane) for lane in LANES]

    @property
    def routed_lanes(self) -> list[str]:
        return self.lanes_of(self.routed)

    @property
    def prepared_lanes(self) -> list[str]:
        return self.lanes_of(self.prepared)

    def partner_lanes(self, partner_id: str) -> list[str]:
        """The partner's feeds, most urgent first: all three are the partner's to read."""
        return self.lanes_of(self.partner(partner_id))

    def lane_of(self, topic: str) -> str | None:
        """The lane a topic is, None for a topic without lanes (ingested, outcomes, receipts...).
        Parsed rather than matched by suffix: a partner may be called "bulk"."""
        match = re.match(
            "^" + re.escape(f"{self.prefix}imx.") + r"(?:routed|prepared|partner\.[a-z0-9-]+)(?:\.(urgent|bulk))?\.v1$",
            topic,
        )
        if match is None:
            return None
        return match.group(1) or ROUTINE

    def receipts(self, partner_id: str) -> str:
        """What the partner's gateway stored (DeliveryReceipt); only that partner may write it."""
        return self._name(f"receipts.{validate_partner_id(partner_id)}")

    def pipeline(self) -> list[str]:
        """The fixed topics of the pipeline (partner topics are created when partners are added)."""
        return [
            self.ingested,
            *self.routed_lanes,
            *self.prepared_lanes,
            self.outcomes,
            self.quarantine,
            self.dead_letter,
            self.access,
            self.alerts,
        ]

    @property
    def partner_pattern(self) -> str:
        """Regex matching every partner feed, every lane."""
        return "^" + re.escape(f"{self.prefix}imx.partner.") + r"[a-z0-9-]+(?:\.urgent|\.bulk)?\.v1$"

    @property
    def receipts_pattern(self) -> str:
        """Regex matching every partner's receipts topic (audit subscribes to them all)."""
        return "^" + re.escape(f"{self.prefix}imx.receipts.") + r"[a-z0-9-]+\.v1$"

    @functools.cached_property
    def _receipts_partner_pattern(self) -> re.Pattern[str]:
        # Compiled once: delivery and audit ask this of every record they consume.
        return re.compile(self.receipts_pattern.replace(r"[a-z0-9-]+", r"([a-z0-9-]+)"))

    def receipts_partner(self, topic: str) -> str | None:
        """The partner id a receipts topic belongs to, None when it is not one."""
        match = self._receipts_partner_pattern.match(topic)
        return match.group(1) if match else None
