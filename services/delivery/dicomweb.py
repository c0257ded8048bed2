"""The partners' DICOMweb API (WADO-RS and QIDO-RS, PS3.18), scoped to what each partner was sent.

Routes (under `prefix`, default /dicomweb) as in docs/delivery.md. Every request needs
`Authorization: Bearer <key>`; the key names the partner, and the partner sees only documents under
its own id: another partner's object and an object that does not exist get the same 404 with the same
body, never a 403 that would confirm it exists. Objects stream from their files one chunk at a time,
whatever their size. Every authenticated request, answered or refused, produces one PartnerRetrieval.

The app holds no clients or settings of its own: `create_partner_app` is given its collaborators.
(No `from __future__ import annotations` here: FastAPI must see the route signatures' real types,
and the `Partner` dependency alias is local to the factory.)
"""

import json
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Annotated

from fastapi import Depends, FastAPI, Header, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pymongo.errors import PyMongoError
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.types import Receive, Scope, Send

from services.common.blob_splices import Extent
from services.common.blob_store import LaggedDrop
from services.common.events import now_ms
from services.common.http_direct import FileAnswer
from services.common.http_server import FASTAPI_TELEMETRY_OFF
from services.delivery.byte_ranges import RangeNotSatisfiable, entity_tag, none_match, requested_range
from services.delivery.delivered import DeliveredInstance
from services.delivery.dicomweb_json import (
    Json,
    by_series,
    instance_result,
    matches,
    metadata_for,
    series_result,
    study_result,
)
from services.delivery.dicomweb_media import (
    CHUNK_BYTES,
    DICOM,
    DICOM_JSON,
    FilePart,
    Representation,
    accepts_dicom_json,
    choose_representation,
    multipart_body,
    multipart_content_type,
    new_boundary,
    single_body,
)
from services.delivery.dicomweb_request import (
    NOT_FOUND,
    REALM,
    Criteria,
    DeliveredReader,
    KeysUnavailable,
    Refusal,
    RequestContext,
    Retrieval,
    Unauthenticated,
    check_uids,
    partial_content_warning,
    query_criteria,
    query_page,
    uids_valid,
)
from services.delivery.object_response import ObjectResponse
from services.delivery.retrieval_refs import QUERY_PARAM as REF_PARAM
from services.delivery.retrieval_refs import RetrievalRefs
from services.proto_gen.imx.v1.events_pb2 import PartnerRetrieval

log = logging.getLogger(__name__)

# Studies `/studies` reads the manifest of and passes over (not matching, or before the offset) before it
# answers 413 ("query too broad", PS3.18 8.3.4): each is a database read in a worker thread that every
# partner's fetches share, and a key no study matches read every study the partner was sent (20,000
# studies: 40,001 commands).
MAX_STUDIES_PASSED = 2_000


class PartnerApp(FastAPI):
    """FastAPI, with the gateways' usual fetch (`at_once`: its answer, or None) answered before
    FastAPI's middleware, routing and parameter validation run, which cost ~0.1 ms of the HTTP
    thread's ~0.6 ms of CPU per fetch (docs/delivery.md). Anything `at_once` declines goes through
    FastAPI, where the same route is declared (for its answers otherwise, and the OpenAPI document)."""

    at_once: Callable[[Scope], Response | None] | None = None
    # The same answer for the server's direct path (services/common/http_direct.py): the object's bytes
    # written by the server itself, before uvicorn's h11 and FastAPI; None: the ASGI way, as above.
    direct: Callable[[Scope], FileAnswer | None] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.at_once is not None and scope["type"] == "http":
            response = self.at_once(scope)
            if response is not None:
                await response(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


def create_partner_app(
    delivered: DeliveredReader,
    partner_for_key: Callable[[str], str | None],
    blob_extent: Callable[[str], Extent],
    record_retrieval: Callable[[PartnerRetrieval], None],
    public_url: Callable[[], str] | None = None,
    prefix: str = "/dicomweb",
    clock: Callable[[], int] = now_ms,
    refs: RetrievalRefs | None = None,
    cached_partner_for_key: Callable[[str], str | None] = lambda _key: None,
) -> PartnerApp:
    """The API. `partner_for_key`: a Bearer key -> partner id (None: not a key), cached by the caller;
    `blob_extent`: SHA-256 -> where the object's bytes are (LocalBlobStore.extent);
    `record_retrieval`: publishes one event per request,
    without blocking (it is called on the event loop);
    `public_url`: the base partners use (RetrieveURL in QIDO results; a function, as the port may be
    known only once bound), None: as the request came. `refs`: verifies the signed retrieval references
    delivery puts on partners' feeds, so an instance fetched by one is served without reading `delivered`.
    `cached_partner_for_key`: the partner of a key known without any I/O, else None (then
    `partner_for_key` is asked, in a worker thread)."""
    ctx = RequestContext(delivered, blob_extent, record_retrieval, clock, public_url, prefix)
    # An object sent whole is done with in the normal path (each is fetched once): its pages are let go.
    served = LaggedDrop()
    app = PartnerApp(
        title="imx partner DICOMweb",
        openapi_url=f"{prefix}/openapi.json",
        docs_url=None,
        redoc_url=None,
        telemetry=FASTAPI_TELEMETRY_OFF,
    )

    def partner(authorization: Annotated[str | None, Header()] = None) -> str:
        scheme, _, key = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise Unauthenticated(REALM)
        try:
            partner_id = partner_for_key(key.strip())
        except PyMongoError as error:
            log.error("partner keys unavailable", extra={"error": type(error).__name__})
            raise KeysUnavailable from None
        if partner_id is None:
            raise Unauthenticated(REALM + ', error="invalid_token"')
        return partner_id

    Partner = Annotated[str, Depends(partner)]

    def signed_instance(
        request: Request, partner_id: str, study: str, series: str, sop: str
    ) -> DeliveredInstance | None:
        """The instance a signed retrieval reference names, when it verifies for this partner and path
        (services/delivery/retrieval_refs.py); otherwise None, and the index is asked as without one."""
        if refs is None:
            return None
        signed = refs.verify(request.query_params.get(REF_PARAM), partner_id, study, series, sop)
        if signed is None:
            return None
        return DeliveredInstance(
            partner_id, study, series, sop, "", signed.transfer_syntax_uid, signed.sha256, signed.size, ""
        )

    @app.exception_handler(KeysUnavailable)
    def keys_unavailable(_request: Request, _error: KeysUnavailable) -> Response:
        return JSONResponse({"detail": "temporarily unavailable"}, 503, headers={"Retry-After": "5"})

    @app.exception_handler(Unauthenticated)
    def unauthenticated(_request: Request, error: Unauthenticated) -> Response:
        return JSONResponse({"detail": "a partner key is required"}, 401, headers={"WWW-Authenticate": error.challenge})

    def answer(retrieval: Retrieval, work: Callable[[], Response]) -> Response:
        """Run one request: a Refusal becomes its status; the event is sent once the answer is out."""
        try:
            response = work()
        except Refusal as refusal:
            body = NOT_FOUND if refusal.status == 404 else {"detail": refusal.detail}
            response = JSONResponse(body, refusal.status, headers=refusal.headers)
        except PyMongoError as error:
            log.error(
                "delivered index unavailable", extra={"partner": retrieval.partner_id, "error": type(error).__name__}
            )
            response = JSONResponse({"detail": "temporarily unavailable"}, 503, headers={"Retry-After": "5"})
        retrieval.status = response.status_code
        if isinstance(response, ObjectResponse):
            response.on_done = lambda whole: object_sent(retrieval, response.size if whole else 0)
        elif not isinstance(response, StreamingResponse) and response.status_code < 300:
            retrieval.bytes = len(response.body)  # a query's results; a refusal sends nothing of the partner's
        # A stream sends its event when it ends (see `stream`); this covers a stream never started.
        response.background = BackgroundTask(finish_on_loop, retrieval)
        return response

    def object_sent(retrieval: Retrieval, size: int) -> None:
        """A single object's event, once its answer is out: its size, or 0 when the transfer broke (it
        goes by the kernel, which says only whether all of it was written)."""
        retrieval.bytes = size
        ctx.finish(retrieval)

    async def finish_on_loop(retrieval: Retrieval) -> None:
        """On the event loop, not in a worker thread: a sync task would cost a hand-over to the thread
        pool and back per request, about a third of the loop's time on the gateways' fetches (py-spy,
        `--gil`); `record_retrieval` does not block."""
        ctx.finish(retrieval)

    def stream(retrieval: Retrieval, body: Iterator[bytes]) -> Iterator[bytes]:
        """`body`, then the event (also when the partner hangs up part way: it says what was sent)."""
        try:
            yield from body
        finally:
            ctx.finish(retrieval)

    def retrieve(retrieval: Retrieval, request: Request, items: Sequence[DeliveredInstance], single: bool) -> Response:
        if not items:
            raise Refusal(404, "not found")
        representation = choose_representation(
            request.headers.get("accept"), {i.transfer_syntax_uid for i in items}, single
        )
        if representation is None:
            raise Refusal(
                406,
                'only as stored: application/dicom or multipart/related; type="application/dicom"',
            )
        found, gone = ctx.available_parts(items)
        parts = [part for part in found if part is not None]
        if not parts:
            raise Refusal(410, "the object is no longer available")

        def sent(n: int) -> None:
            retrieval.bytes += n

        if representation is Representation.SINGLE:
            return one_instance(retrieval, request, items[0], parts[0], sent)

        def counted(files: Iterable[FilePart]) -> Iterator[FilePart]:
            for part in files:
                retrieval.instances += 1
                yield part

        boundary = new_boundary()
        return StreamingResponse(
            stream(retrieval, multipart_body(counted(parts), boundary, sent)),
            status_code=206 if gone else 200,
            headers=partial_content_warning(gone, len(items)) if gone else None,
            media_type=multipart_content_type(boundary),
        )

    def one_instance(
        retrieval: Retrieval, request: Request, item: DeliveredInstance, part: FilePart, sent: Callable[[int], None]
    ) -> Response:
        """One instance as `application/dicom`: whole, or the one range asked for (a broken transfer
        resumed), or 304 when the partner's copy is this object (byte_ranges.py); a HEAD gets the
        headers only."""
        syntax = f"; transfer-syntax={part.transfer_syntax}" if part.transfer_syntax else ""
        etag = entity_tag(item.sha256)
        headers = {"ETag": etag, "Accept-Ranges": "bytes"}
        if none_match(request.headers.get("if-none-match"), etag):
            return Response(status_code=304, headers=headers)  # recorded as no instance sent
        # Range is defined for GET alone (RFC 9110 §14.2): a HEAD gets the whole object's headers.
        asked = request.headers.get("range") if request.method == "GET" else None
        try:
            wanted = requested_range(asked, request.headers.get("if-range"), etag, part.size)
        except RangeNotSatisfiable:
            raise Refusal(
                416, "the range is not within the object", {"Content-Range": f"bytes */{part.size}"}
            ) from None
        if wanted is not None:
            headers["Content-Range"] = wanted.content_range(part.size)
        length = part.size if wanted is None else wanted.length
        status = 200 if wanted is None else 206
        if request.method == "HEAD":
            return Response(
                status_code=status, media_type=DICOM + syntax, headers={**headers, "Content-Length": str(length)}
            )
        retrieval.instances = 1  # a body goes: HEAD, 304 and 416 send none, and are not an export
        if wanted is None and part.size <= CHUNK_BYTES:
            # What streaming would read in one piece anyway, sent as one body (by sendfile where the
            # server offers it): no hand-over to a worker thread per chunk. Counted by `answer`.
            try:
                return ObjectResponse(part.extent(), part.size, DICOM + syntax, served, headers)
            except OSError:  # collected since `file_part` looked: as if it had been gone then
                raise Refusal(410, "the object is no longer available") from None
        start = 0 if wanted is None else wanted.start
        return StreamingResponse(
            stream(retrieval, single_body(part, sent, start=start, length=length)),
            status_code=status,
            media_type=DICOM + syntax,
            headers={**headers, "Content-Length": str(length)},
        )

    def metadata(retrieval: Retrieval, request: Request, items: Sequence[DeliveredInstance]) -> Response:
        if not accepts_dicom_json(request.headers.get("accept")):
            raise Refusal(406, "metadata is served as application/dicom+json")
        if not items:
            raise Refusal(404, "not found")
        parts, gone = ctx.available_parts(items)  # a gone one's metadata is the identifiers on record
        if gone == len(items):
            raise Refusal(410, "the object is no longer available")

        def documents() -> Iterator[bytes]:
            # One header at a time: a study of thousands of instances never sits in memory whole.
            yield b"["
            for index, (item, part) in enumerate(zip(items, parts, strict=True)):
                chunk = (b"," if index else b"") + json.dumps(
                    part_metadata(item, part), separators=(",", ":"), allow_nan=False
                ).encode()
                retrieval.instances += 1
                retrieval.bytes += len(chunk)
                yield chunk
            yield b"]"

        return StreamingResponse(stream(retrieval, documents()), media_type=DICOM_JSON)

    def part_metadata(item: DeliveredInstance, part: FilePart | None) -> Json:
        if part is None:
            return metadata_for(item, None)
        try:
            handle = part.open()
        except OSError:  # collected since `file_part` looked: the identifiers on record
            return metadata_for(item, None)
        with handle:
            return metadata_for(item, handle)

    def found(results: list[Json], retrieval: Retrieval) -> Response:
        retrieval.instances = len(results)
        return Response(json.dumps(results, separators=(",", ":"), allow_nan=False), media_type=DICOM_JSON)

    def query(
        retrieval: Retrieval, request: Request, make: Callable[[Criteria, int, int, str], list[Json]]
    ) -> Response:
        if not accepts_dicom_json(request.headers.get("accept")):
            raise Refusal(406, "query results are served as application/dicom+json")
        limit, offset = query_page(request)
        return found(make(query_criteria(request), limit, offset, ctx.base_url(request)), retrieval)

    # --- WADO-RS -------------------------------------------------------------------------------

    def answer_at_once(
        study: str, series: str, sop: str, request: Request, authorization: str | None
    ) -> Response | None:
        """The gateways' usual fetch, answered on the event loop: a key known without a database read,
        a signed reference that verifies, an object of at most one chunk (read whole, as streaming
        would read it; it was written moments ago, so from the page cache). None: anything else, which
        takes the worker thread (`retrieve_instance`) with the same answers."""
        scheme, _, key = (authorization or "").partition(" ")
        if refs is None or scheme.lower() != "bearer" or not key.strip():
            return None
        partner_id = cached_partner_for_key(key.strip())
        if partner_id is None or not uids_valid(study, series, sop):
            return None
        item = signed_instance(request, partner_id, study, series, sop)
        if item is None or item.size > CHUNK_BYTES:
            return None
        retrieval = Retrieval(partner_id, "instance", study, series, sop)
        return answer(retrieval, lambda: retrieve(retrieval, request, [item], single=True))

    instances_under = prefix + "/studies/"

    def signed_fetch(scope: Scope) -> Response | None:
        """`answer_at_once` for a GET that the instance route below matches (each UID one non-empty
        path segment), asked before FastAPI runs; None: FastAPI answers it, as any other request. An
        error here is left to that route too, which meets it again and answers it as FastAPI does."""
        path: str = scope["path"]
        if scope["method"] != "GET" or scope.get("root_path") or not path.startswith(instances_under):
            return None
        parts = path[len(instances_under) :].split("/")
        if len(parts) != 5 or parts[1] != "series" or parts[3] != "instances":
            return None
        request = Request(scope)
        try:
            return answer_at_once(parts[0], parts[2], parts[4], request, request.headers.get("authorization"))
        except Exception:
            return None

    def direct(scope: Scope) -> FileAnswer | None:
        """`signed_fetch`'s object answer, written by the server; its retrieval event once it is out. A
        refusal (a 410 for an object gone meanwhile) is declined and answered by the ASGI way, which
        meets it again: the response built here is dropped unsent, so it records no event."""
        response = signed_fetch(scope)
        return response.file_answer() if isinstance(response, ObjectResponse) else None

    app.at_once = signed_fetch
    app.direct = direct

    @app.api_route(prefix + "/studies/{study}/series/{series}/instances/{sop}", methods=["GET", "HEAD"])
    async def retrieve_instance(
        study: str, series: str, sop: str, request: Request, authorization: Annotated[str | None, Header()] = None
    ) -> Response:
        # The gateways' hot path, one request per delivered instance: answered on the event loop, before
        # FastAPI, when that needs no database (`at_once`; asked again here for a request it never saw,
        # one under a root path); otherwise the key, the lookup and (for an object of one chunk) the
        # read run in one worker thread, not one each for the key, the handler and every chunk of the
        # body as a sync dependency, endpoint and stream would.
        at_once = answer_at_once(study, series, sop, request, authorization)
        if at_once is not None:
            return at_once

        def handle() -> Response:
            partner_id = partner(authorization)
            retrieval = Retrieval(partner_id, "instance")

            def work() -> Response:
                check_uids(study, series, sop)
                retrieval.study_uid, retrieval.series_uid, retrieval.sop_uid = study, series, sop
                item = signed_instance(request, partner_id, study, series, sop) or delivered.instance(
                    partner_id, study, series, sop
                )
                return retrieve(retrieval, request, [item] if item else [], single=True)

            return answer(retrieval, work)

        return await run_in_threadpool(handle)

    @app.get(prefix + "/studies/{study}/series/{series}")
    def retrieve_series(study: str, series: str, request: Request, partner_id: Partner) -> Response:
        retrieval = Retrieval(partner_id, "series")

        def work() -> Response:
            check_uids(study, series)
            retrieval.study_uid, retrieval.series_uid = study, series
            return retrieve(retrieval, request, delivered.series(partner_id, study, series), single=False)

        return answer(retrieval, work)

    @app.get(prefix + "/studies/{study}")
    def retrieve_study(study: str, request: Request, partner_id: Partner) -> Response:
        retrieval = Retrieval(partner_id, "study")

        def work() -> Response:
            check_uids(study)
            retrieval.study_uid = study
            return retrieve(retrieval, request, delivered.study(partner_id, study), single=False)

        return answer(retrieval, work)

    @app.get(prefix + "/studies/{study}/series/{series}/instances/{sop}/metadata")
    def instance_metadata(study: str, series: str, sop: str, request: Request, partner_id: Partner) -> Response:
        retrieval = Retrieval(partner_id, "metadata")

        def work() -> Response:
            check_uids(study, series, sop)
            retrieval.study_uid, retrieval.series_uid, retrieval.sop_uid = study, series, sop
            item = delivered.instance(partner_id, study, series, sop)
            return metadata(retrieval, request, [item] if item else [])

        return answer(retrieval, work)

    @app.get(prefix + "/studies/{study}/series/{series}/metadata")
    def series_metadata(study: str, series: str, request: Request, partner_id: Partner) -> Response:
        retrieval = Retrieval(partner_id, "metadata")

        def work() -> Response:
            check_uids(study, series)
            retrieval.study_uid, retrieval.series_uid = study, series
            return metadata(retrieval, request, delivered.series(partner_id, study, series))

        return answer(retrieval, work)

    @app.get(prefix + "/studies/{study}/metadata")
    def study_metadata(study: str, request: Request, partner_id: Partner) -> Response:
        retrieval = Retrieval(partner_id, "metadata")

        def work() -> Response:
            check_uids(study)
            retrieval.study_uid = study
            return metadata(retrieval, request, delivered.study(partner_id, study))

        return answer(retrieval, work)

    # --- QIDO-RS: only what the partner was sent ------------------------------------------------

    @app.get(prefix + "/studies")
    def search_studies(request: Request, partner_id: Partner) -> Response:
        retrieval = Retrieval(partner_id, "query")

        def make(criteria: Criteria, limit: int, offset: int, base: str) -> list[Json]:
            wanted = criteria.pop("study_uid", None)
            if wanted is not None:
                # Asked by UID (the usual "is this study there?"): each one's manifest by `_id`, not a
                # scan of every study the partner was ever sent.
                named = {uid: delivered.study(partner_id, uid) for uid in sorted(wanted) if uids_valid(uid)}
                chosen = [uid for uid, items in named.items() if any(matches(i, criteria) for i in items)]
                return [study_result(uid, named[uid], base) for uid in chosen[offset : offset + limit]]
            results = []
            if not criteria:  # only the page's studies are read
                study_uids = sorted(str(s["study_uid"]) for s in delivered.studies(partner_id))
                for uid in study_uids[offset : offset + limit]:
                    results.append(study_result(uid, delivered.study(partner_id, uid), base))
                return results
            skipped = passed = 0
            for uid in sorted(str(s["study_uid"]) for s in delivered.studies(partner_id, criteria)):
                instances = delivered.study(partner_id, uid)
                matched = any(matches(i, criteria) for i in instances)
                if not matched or skipped < offset:
                    passed += 1
                    if passed > MAX_STUDIES_PASSED:  # each a read of its manifest, in a shared worker
                        raise Refusal(413, "query too broad: ask by StudyInstanceUID, or for a study's series")
                    skipped += matched
                    continue
                results.append(study_result(uid, instances, base))
                if len(results) >= limit:
                    break
            return results

        return answer(retrieval, lambda: query(retrieval, request, make))

    @app.get(prefix + "/studies/{study}/series")
    def search_series(study: str, request: Request, partner_id: Partner) -> Response:
        retrieval = Retrieval(partner_id, "query")

        def make(criteria: Criteria, limit: int, offset: int, base: str) -> list[Json]:
            groups = by_series(i for i in delivered.study(partner_id, study) if matches(i, criteria))
            return [
                series_result(study, uid, items, base) for uid, items in list(groups.items())[offset : offset + limit]
            ]

        def work() -> Response:
            check_uids(study)
            retrieval.study_uid = study
            return query(retrieval, request, make)

        return answer(retrieval, work)

    def instances_query(retrieval: Retrieval, request: Request, study: str, series: str | None) -> Response:
        partner_id = retrieval.partner_id

        def make(criteria: Criteria, limit: int, offset: int, base: str) -> list[Json]:
            items = delivered.series(partner_id, study, series) if series else delivered.study(partner_id, study)
            chosen = [i for i in items if matches(i, criteria)][offset : offset + limit]
            return [instance_result(i, base) for i in chosen]

        check_uids(study, *([series] if series else []))
        retrieval.study_uid, retrieval.series_uid = study, series or ""
        return query(retrieval, request, make)

    @app.get(prefix + "/studies/{study}/series/{series}/instances")
    def search_series_instances(study: str, series: str, request: Request, partner_id: Partner) -> Response:
        retrieval = Retrieval(partner_id, "query")
        return answer(retrieval, lambda: instances_query(retrieval, request, study, series))

    @app.get(prefix + "/studies/{study}/instances")
    def search_study_instances(study: str, request: Request, partner_id: Partner) -> Response:
        retrieval = Retrieval(partner_id, "query")
        return answer(retrieval, lambda: instances_query(retrieval, request, study, None))

    return app
