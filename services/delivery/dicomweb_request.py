"""What one request to the partners' DICOMweb API carries through its handling: the partner's
PartnerRetrieval being filled in, the refusals it may end in, and the collaborators it reads."""

import logging
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from fastapi import Request

from services.common.blob_splices import Extent
from services.common.blob_store import BlobCorrupt, BlobNotFound
from services.common.dicom.uids import is_uid_as_received
from services.delivery.delivered import DeliveredInstance
from services.delivery.dicomweb_json import IGNORED_PARAMS, MATCH_KEYS, wanted_values
from services.delivery.dicomweb_media import FilePart
from services.proto_gen.imx.v1.events_pb2 import EventMeta, PartnerRetrieval

log = logging.getLogger(__name__)

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
REALM = 'Bearer realm="imx-dicomweb"'
NOT_FOUND = {"detail": "not found"}


class DeliveredReader(Protocol):
    """What the API reads of `services.delivery.delivered.DeliveredObjects`."""

    def instance(self, partner_id: str, study_uid: str, series_uid: str, sop_uid: str) -> DeliveredInstance | None: ...

    def study(self, partner_id: str, study_uid: str) -> list[DeliveredInstance]: ...

    def series(self, partner_id: str, study_uid: str, series_uid: str) -> list[DeliveredInstance]: ...

    def studies(self, partner_id: str, narrowed: Mapping[str, frozenset[str]] = ...) -> Iterator[dict[str, object]]: ...


class Unauthenticated(Exception):
    def __init__(self, challenge: str) -> None:
        super().__init__("unauthenticated")
        self.challenge = challenge


class KeysUnavailable(Exception):
    """A partner's key could not be checked (MongoDB away): 503 with Retry-After, which gateways wait
    out, not the 500 they spend attempts on and dead-letter after."""


class Refusal(Exception):
    """An answer other than the resource: status and a fixed, PHI-free body."""

    def __init__(self, status: int, detail: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers


@dataclass
class Retrieval:
    """The PartnerRetrieval of one request, filled in as the request goes; sent once, at its end."""

    partner_id: str
    action: str
    study_uid: str = ""
    series_uid: str = ""
    sop_uid: str = ""
    instances: int = 0
    bytes: int = 0
    status: int = 0
    _sent: bool = field(default=False, repr=False)

    def event(self, occurred_at_ms: int) -> PartnerRetrieval:
        # A random id: retrievals are facts about requests, never replayed, so nothing to deduplicate.
        return PartnerRetrieval(
            meta=EventMeta(event_id=uuid.uuid4().hex, occurred_at_ms=occurred_at_ms),
            partner_id=self.partner_id,
            action=self.action,
            study_instance_uid=self.study_uid,
            series_instance_uid=self.series_uid,
            sop_instance_uid=self.sop_uid,
            instances=self.instances,
            bytes=self.bytes,
            http_status=self.status,
        )


@dataclass(frozen=True)
class RequestContext:
    delivered: DeliveredReader
    blob_extent: Callable[[str], Extent]
    record_retrieval: Callable[[PartnerRetrieval], None]
    clock: Callable[[], int]
    public_url: Callable[[], str] | None
    prefix: str

    def finish(self, retrieval: Retrieval) -> None:
        if retrieval._sent:
            return
        retrieval._sent = True
        log.debug(
            "partner retrieval",
            extra={
                "partner": retrieval.partner_id,
                "stage": retrieval.action,
                "status": retrieval.status,
                "instances": retrieval.instances,
            },
        )
        try:
            self.record_retrieval(retrieval.event(self.clock()))
        except Exception as error:  # the answer is already on its way; the failure must be seen, not raised
            log.error("retrieval not recorded", extra={"partner": retrieval.partner_id, "error": type(error).__name__})

    def base_url(self, request: Request) -> str:
        if self.public_url:
            return self.public_url().rstrip("/")
        # Only as good as the Host header (dicomweb-client, for one, leaves the port out of it).
        return str(request.base_url).rstrip("/") + self.prefix

    def file_part(self, item: DeliveredInstance) -> FilePart:
        """The object's bytes, checked to be there and whole; 410 when the blob is gone or damaged."""
        try:
            extent = self.blob_extent(item.sha256)
        except (BlobNotFound, OSError, ValueError):
            log.warning("delivered blob missing", extra={"partner": item.partner_id, "reason": "blob-missing"})
            raise Refusal(410, "the object is no longer available") from None
        except BlobCorrupt:
            log.warning("delivered blob corrupt", extra={"partner": item.partner_id, "reason": "blob-corrupt"})
            raise Refusal(410, "the object is no longer available") from None
        if extent.size != item.size:
            log.warning(
                "delivered blob has the wrong size", extra={"partner": item.partner_id, "reason": "blob-size-mismatch"}
            )
            raise Refusal(410, "the object is no longer available")
        return FilePart(extent.path, extent.size, item.transfer_syntax_uid, extent.head, extent.offset)

    def available_parts(self, items: Sequence[DeliveredInstance]) -> tuple[list[FilePart | None], int]:
        """`file_part` of each, None for those gone or damaged (their count second): one instance gone
        (collected after its retention, say) made the whole study's retrieval a 410."""
        parts: list[FilePart | None] = []
        for item in items:
            try:
                parts.append(self.file_part(item))
            except Refusal as refusal:
                if refusal.status != 410:
                    raise
                parts.append(None)
        return parts, parts.count(None)


def partial_content_warning(gone: int, asked: int) -> dict[str, str]:
    """PS3.18's answer to a retrieval of which some instances cannot be sent: 206 with a Warning (RFC
    7234 299, "miscellaneous persistent warning") saying how many."""
    return {"Warning": f'299 imx "{gone} of {asked} instances are no longer available"'}


def uids_valid(*uids: str) -> bool:
    """UIDs as ingest accepts them (leading zeros too: a care transfer keeps the sender's UIDs, and its
    references must resolve)."""
    return all(is_uid_as_received(uid) for uid in uids)


def check_uids(*uids: str) -> None:
    if not uids_valid(*uids):
        raise Refusal(400, "invalid UID in path")


def query_page(request: Request) -> tuple[int, int]:
    try:
        limit = int(request.query_params.get("limit", DEFAULT_LIMIT))
        offset = int(request.query_params.get("offset", 0))
    except ValueError:
        raise Refusal(400, "limit and offset must be integers") from None
    if limit < 0 or offset < 0:
        raise Refusal(400, "limit and offset must not be negative")
    return min(limit or MAX_LIMIT, MAX_LIMIT), offset


# A QIDO-RS query's matching keys: DeliveredInstance field -> the values wanted (any of them).
Criteria = dict[str, frozenset[str]]


def query_criteria(request: Request) -> Criteria:
    """The query's matching keys (`Criteria`)."""
    criteria: Criteria = {}
    anything: set[str] = set()  # keys given "*" (or empty): any value matches, whatever else was given
    for name, value in request.query_params.multi_items():  # items() kept only a repeated key's last value
        if name in ("limit", "offset") or name.lower() in IGNORED_PARAMS:
            continue
        field_name = MATCH_KEYS.get(name) or MATCH_KEYS.get(name.upper())
        if field_name is None:
            # Only the key is refused, never echoed: a value (or a key) may be a patient's name.
            raise Refusal(400, "unsupported query parameter")
        if value and value != "*":  # a key given twice matches either value, as one list would
            criteria[field_name] = criteria.get(field_name, frozenset()) | wanted_values(value)
        else:
            anything.add(field_name)
    return {name: values for name, values in criteria.items() if name not in anything}
