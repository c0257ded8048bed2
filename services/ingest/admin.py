"""OrganisationAdmin gRPC servicer: who may send, by calling AE title (C-STORE) or API key (STOW-RS)."""

from __future__ import annotations

from collections.abc import Callable

import grpc

from services.common.control_server import ServicerRegistration
from services.common.messages import shown
from services.common.stores.organisations import Organisation, OrganisationStore, validate_organisation
from services.proto_gen.imx.v1 import admin_pb2, admin_pb2_grpc


def organisation_to_proto(org: Organisation) -> admin_pb2.Organisation:
    return admin_pb2.Organisation(
        org_id=org.org_id, name=org.name, ae_titles=list(org.ae_titles), dicom_from=list(org.dicom_from)
    )


def organisation_from_proto(msg: admin_pb2.Organisation) -> Organisation:
    return Organisation(
        org_id=msg.org_id,
        name=msg.name,
        ae_titles=tuple(ae.strip() for ae in msg.ae_titles),
        dicom_from=tuple(msg.dicom_from),
    )


class OrganisationAdminServicer(admin_pb2_grpc.OrganisationAdminServicer):
    def __init__(self, store: OrganisationStore, on_change: Callable[[], object] = lambda: None) -> None:
        self._store = store
        # Lets this replica's C-STORE SCP know at once; other replicas catch up on their next refresh.
        self._on_change = on_change

    def AddOrganisation(
        self, request: admin_pb2.AddOrganisationRequest, context: grpc.ServicerContext
    ) -> admin_pb2.AddOrganisationReply:
        try:
            org = validate_organisation(organisation_from_proto(request.organisation))  # as stored: networks tidied
            api_key = self._store.add(org, issue_api_key=request.issue_api_key)
        except ValueError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        self._on_change()
        # The key is shown here once; the store keeps only its digest.
        return admin_pb2.AddOrganisationReply(organisation=organisation_to_proto(org), api_key=api_key)

    def ListOrganisations(
        self, request: admin_pb2.ListOrganisationsRequest, context: grpc.ServicerContext
    ) -> admin_pb2.ListOrganisationsReply:
        return admin_pb2.ListOrganisationsReply(organisations=[organisation_to_proto(o) for o in self._store.list()])

    def RemoveOrganisation(
        self, request: admin_pb2.RemoveOrganisationRequest, context: grpc.ServicerContext
    ) -> admin_pb2.RemoveOrganisationReply:
        if not self._store.remove(request.org_id):
            context.abort(grpc.StatusCode.NOT_FOUND, f"no organisation {shown(request.org_id)}")
        self._on_change()
        return admin_pb2.RemoveOrganisationReply(removed=True)


def register_organisation_admin(
    store: OrganisationStore, on_change: Callable[[], object] = lambda: None
) -> ServicerRegistration:
    def register(server: grpc.Server) -> None:
        admin_pb2_grpc.add_OrganisationAdminServicer_to_server(OrganisationAdminServicer(store, on_change), server)

    return register
