"""ProfileAdmin gRPC servicer: list, show, add and remove de-identification profiles, and preview
what a profile does to one instance with the engine's own `preview` (the stage's code path)."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any, NoReturn

import grpc

from services.common.control_server import GRPC_MAX_MESSAGE_BYTES, ServicerRegistration
from services.common.messages import shown
from services.deid.engine import BUILTIN_PROFILES, AttributeChange, DeidError, Profile, preview
from services.deid.engine.errors import tag_text
from services.deid.handler import refusal_for
from services.deid.profile_documents import profile_from_document, profile_to_document, profile_version_number
from services.deid.profile_store import ProfileStore, ProtectedProfile
from services.proto_gen.imx.v1 import profiles_pb2, profiles_pb2_grpc

MIN_KEY_BYTES = 16
_RULE_CONDITIONS = ("manufacturer", "model", "rows", "columns", "modality")


def profile_to_proto(profile: Profile) -> profiles_pb2.DeidProfile:
    doc = profile_to_document(profile)
    rules = []
    for rule in doc["pixel_rules"]:
        conditions = {field: rule[field] for field in _RULE_CONDITIONS if field in rule}
        regions = [profiles_pb2.DeidRegion(**region) for region in rule["regions"]]
        rules.append(profiles_pb2.DeidPixelRule(regions=regions, **conditions))
    return profiles_pb2.DeidProfile(
        name=doc["name"],
        version=doc["version"],
        options=doc["options"],
        overrides=doc["overrides"],
        pixel_rules=rules,
        builtin=profile.name in BUILTIN_PROFILES,
    )


def document_from_proto(msg: profiles_pb2.DeidProfile) -> dict[str, Any]:
    """The document form of a request; validation is `profile_from_document`'s, as for files."""
    rules = []
    for rule in msg.pixel_rules:
        doc: dict[str, Any] = {
            "regions": [{"x": r.x, "y": r.y, "width": r.width, "height": r.height} for r in rule.regions]
        }
        doc.update({field: getattr(rule, field) for field in _RULE_CONDITIONS if rule.HasField(field)})
        rules.append(doc)
    return {"name": msg.name, "options": list(msg.options), "overrides": dict(msg.overrides), "pixel_rules": rules}


def change_to_proto(change: AttributeChange) -> profiles_pb2.PreviewChange:
    return profiles_pb2.PreviewChange(
        path="/".join(f"{tag_text(tag)}[{index}]" for tag, index in change.path),
        tag=tag_text(change.tag),
        keyword=change.keyword,
        action=str(change.action),
        before=_printable(change.before),
        after=_printable(change.after),
    )


def _printable(value: str) -> str:
    # protobuf strings must be valid UTF-8; undecodable bytes arrive as surrogates.
    return value.encode("utf-8", "replace").decode("utf-8")


class ProfileAdminServicer(profiles_pb2_grpc.ProfileAdminServicer):
    def __init__(self, store: ProfileStore, recipient_key: Callable[[str], bytes | None]) -> None:
        self._store = store
        self._recipient_key = recipient_key

    def ListProfiles(
        self, request: profiles_pb2.ListProfilesRequest, context: grpc.ServicerContext
    ) -> profiles_pb2.ListProfilesReply:
        return profiles_pb2.ListProfilesReply(profiles=[profile_to_proto(p) for p in self._store.list()])

    def GetProfile(
        self, request: profiles_pb2.GetProfileRequest, context: grpc.ServicerContext
    ) -> profiles_pb2.GetProfileReply:
        profile = self._store.get(request.name, request.version)
        if profile is None:
            _abort(context, grpc.StatusCode.NOT_FOUND, _missing(request.name, request.version))
        return profiles_pb2.GetProfileReply(
            profile=profile_to_proto(profile), versions=self._store.versions(request.name)
        )

    def AddProfile(
        self, request: profiles_pb2.AddProfileRequest, context: grpc.ServicerContext
    ) -> profiles_pb2.AddProfileReply:
        try:
            saved, changed = self._store.add(profile_from_document(document_from_proto(request.profile)))
        except ProtectedProfile as exc:
            _abort(context, grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        except ValueError as exc:
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        return profiles_pb2.AddProfileReply(profile=profile_to_proto(saved), changed=changed)

    def RemoveProfile(
        self, request: profiles_pb2.RemoveProfileRequest, context: grpc.ServicerContext
    ) -> profiles_pb2.RemoveProfileReply:
        try:
            removed = self._store.remove(request.name)
        except ProtectedProfile as exc:
            _abort(context, grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        if not removed:
            _abort(context, grpc.StatusCode.NOT_FOUND, _missing(request.name, 0))
        return profiles_pb2.RemoveProfileReply(removed=True)

    def Preview(self, request: profiles_pb2.PreviewRequest, context: grpc.ServicerContext) -> profiles_pb2.PreviewReply:
        profile = self._store.get(request.profile, request.version)
        if profile is None:
            _abort(context, grpc.StatusCode.NOT_FOUND, _missing(request.profile, request.version))
        if not request.dicom:
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "no DICOM bytes to preview")
        key = self._key_for(request, context)
        reply = profiles_pb2.PreviewReply(profile=profile.name, profile_version=profile_version_number(profile))
        try:
            reply.changes.extend(change_to_proto(c) for c in preview(request.dicom, profile, key))
        except DeidError as error:
            refusal = refusal_for(error)
            reply.refused_reason, reply.refused_detail = refusal.reason, refusal.detail
        return reply

    def _key_for(self, request: profiles_pb2.PreviewRequest, context: grpc.ServicerContext) -> bytes:
        if request.partner_id:
            key = self._recipient_key(request.partner_id)
            if key is None:
                _abort(context, grpc.StatusCode.NOT_FOUND, f"no partner {shown(request.partner_id)}")
            return key
        if request.key:
            if len(request.key) < MIN_KEY_BYTES:
                _abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"a key needs at least {MIN_KEY_BYTES} bytes")
            return bytes(request.key)
        # Neither: pseudonyms that match no partner's, so nothing previewed can be linked to a delivery.
        return secrets.token_bytes(32)


def _abort(context: grpc.ServicerContext, code: grpc.StatusCode, message: str) -> NoReturn:
    context.abort(code, message)
    raise AssertionError("grpc's abort raises")  # for the type checker: abort never returns


def _missing(name: str, version: int) -> str:
    return f"no profile {shown(name)}" + (f" version {version}" if version else "")


# The largest request deid's control server reads: a Preview carries a whole instance.
PREVIEW_MAX_REQUEST_BYTES = GRPC_MAX_MESSAGE_BYTES


def register_profile_admin(store: ProfileStore, recipient_key: Callable[[str], bytes | None]) -> ServicerRegistration:
    def register(server: grpc.Server) -> None:
        profiles_pb2_grpc.add_ProfileAdminServicer_to_server(ProfileAdminServicer(store, recipient_key), server)

    return register
