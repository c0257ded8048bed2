"""ProfileAdmin over a real gRPC socket, backed by FerretDB: manage profiles and preview one instance."""

from __future__ import annotations

from collections.abc import Iterator
from io import BytesIO

import grpc
import pytest
from pydicom import dcmread
from pymongo.database import Database

from services.common.control_channel import control_channel
from services.common.control_server import ControlServer
from services.common.runtime import StageControl
from services.common.stats import StageStats
from services.common.stores.partners import Partner, PartnerStore
from services.deid.admin import PREVIEW_MAX_REQUEST_BYTES, register_profile_admin
from services.deid.engine import BUILTIN_PROFILES, deidentify
from services.deid.profile_store import ProfileStore
from services.proto_gen.imx.v1 import profiles_pb2, profiles_pb2_grpc
from tests.control_tokens import admin_auth
from tests.unit.deid.builders import ct_dataset, to_bytes
from tests.unit.deid.stage_builders import KEEP_PATIENT_NAME, PATIENT_NAME, instance_with_a_previous_name

SOP_INSTANCE_UID = "(0008,0018)"


@pytest.fixture
def admin(db: Database) -> Iterator[profiles_pb2_grpc.ProfileAdminStub]:
    registration = register_profile_admin(ProfileStore(db), PartnerStore(db).pseudonym_key)
    server = ControlServer(
        "deid",
        StageControl(StageStats("deid")),
        port=0,
        extra=[registration],
        auth=admin_auth(),
        max_request_bytes=PREVIEW_MAX_REQUEST_BYTES,  # as deid's main serves it
    )
    server.start()
    channel = control_channel(f"127.0.0.1:{server.port}")
    yield profiles_pb2_grpc.ProfileAdminStub(channel)
    channel.close()
    server.stop(0)


def _add(admin: profiles_pb2_grpc.ProfileAdminStub, **fields: object) -> profiles_pb2.AddProfileReply:
    return admin.AddProfile(profiles_pb2.AddProfileRequest(profile=profiles_pb2.DeidProfile(**fields)), timeout=10)


def _code(call) -> grpc.StatusCode:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as raised:
        call()
    return raised.value.code()


def test_add_get_list_and_remove(admin: profiles_pb2_grpc.ProfileAdminStub) -> None:
    rule = profiles_pb2.DeidPixelRule(regions=[profiles_pb2.DeidRegion(x=0, y=0, width=64, height=20)], modality="US")
    first = _add(admin, name="ai", options=["retain-uids"], pixel_rules=[rule])
    second = _add(admin, name="ai", options=["rtn_uids_opt"], overrides={"SeriesDescription": "K"}, pixel_rules=[rule])
    assert (first.profile.version, first.changed, second.profile.version, second.changed) == (1, True, 2, True)
    assert dict(second.profile.overrides) == {"(0008,103E)": "K"}
    same = _add(admin, name="ai", options=["retain-uids"], overrides={"(0008,103e)": "K"}, pixel_rules=[rule])
    assert (same.changed, same.profile.version) == (False, 2)

    got = admin.GetProfile(profiles_pb2.GetProfileRequest(name="ai", version=1), timeout=10)
    assert (got.profile.version, dict(got.profile.overrides), list(got.versions)) == (1, {}, [1, 2])
    assert got.profile.pixel_rules[0].modality == "US" and not got.profile.pixel_rules[0].HasField("rows")
    listed = admin.ListProfiles(profiles_pb2.ListProfilesRequest(), timeout=10).profiles
    assert [(p.name, p.version, p.builtin) for p in listed] == [
        ("ai", 2, False),
        ("basic", 1, True),
        ("research", 1, True),
    ]

    assert admin.RemoveProfile(profiles_pb2.RemoveProfileRequest(name="ai"), timeout=10).removed
    assert _code(lambda: admin.GetProfile(profiles_pb2.GetProfileRequest(name="ai"))) == grpc.StatusCode.NOT_FOUND
    assert admin.GetProfile(profiles_pb2.GetProfileRequest(name="ai", version=2)).profile.version == 2


def test_invalid_profiles_and_builtin_changes_are_refused_with_a_reason(
    admin: profiles_pb2_grpc.ProfileAdminStub,
) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        _add(admin, name="ai", options=["retain-longitudinal-full-dates", "retain-longitudinal-modified-dates"])
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "contradict" in raised.value.details()
    with pytest.raises(grpc.RpcError) as raised:
        _add(admin, name="ai", overrides={"(0010,0010)": "maybe"})
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "(0010,0010)" in raised.value.details()
    assert _code(lambda: _add(admin, name="basic", options=["retain-uids"])) == grpc.StatusCode.FAILED_PRECONDITION
    remove = profiles_pb2.RemoveProfileRequest(name="research")
    assert _code(lambda: admin.RemoveProfile(remove)) == grpc.StatusCode.FAILED_PRECONDITION
    missing = profiles_pb2.RemoveProfileRequest(name="nope")
    assert _code(lambda: admin.RemoveProfile(missing)) == grpc.StatusCode.NOT_FOUND


def test_preview_shows_before_and_after_for_patient_name_and_uids(admin: profiles_pb2_grpc.ProfileAdminStub) -> None:
    data = to_bytes(ct_dataset())
    reply = admin.Preview(profiles_pb2.PreviewRequest(profile="research", dicom=data), timeout=30)
    changes = {(c.path, c.tag): c for c in reply.changes}
    name = changes[("", "(0010,0010)")]
    assert (reply.profile, reply.profile_version) == ("research", 1)
    assert (name.keyword, name.before) == ("PatientName", PATIENT_NAME)
    assert name.after.startswith("IMX") and name.after != name.before
    uid = changes[("", SOP_INSTANCE_UID)]
    assert uid.keyword == "SOPInstanceUID" and uid.before == "1.2.826.0.1.3680043.99.1.3.1"
    assert uid.after.startswith("2.25.") and uid.action == "U"
    nested = [c for c in reply.changes if c.path == "(0008,1140)[0]" and c.keyword == "ReferencedSOPInstanceUID"]
    assert nested and nested[0].after.startswith("2.25.")


def test_preview_with_a_partner_uses_that_partners_pseudonyms(
    admin: profiles_pb2_grpc.ProfileAdminStub, db: Database
) -> None:
    partners = PartnerStore(db)
    partners.add(Partner("research-a"))
    data = to_bytes(ct_dataset())
    request = profiles_pb2.PreviewRequest(profile="basic", partner_id="research-a", dicom=data)
    reply = admin.Preview(request, timeout=30)
    released = dcmread(BytesIO(deidentify(data, BUILTIN_PROFILES["basic"], partners.pseudonym_key("research-a")).data))
    after = {c.tag: c.after for c in reply.changes if not c.path}
    assert after[SOP_INSTANCE_UID] == released.SOPInstanceUID
    assert after["(0010,0020)"] == released.PatientID
    unknown = profiles_pb2.PreviewRequest(profile="basic", partner_id="nobody", dicom=data)
    assert _code(lambda: admin.Preview(unknown)) == grpc.StatusCode.NOT_FOUND


def test_preview_reports_a_refusal_without_values(admin: profiles_pb2_grpc.ProfileAdminStub) -> None:
    _add(admin, name="keeps-name", overrides=KEEP_PATIENT_NAME)
    request = profiles_pb2.PreviewRequest(profile="keeps-name", dicom=instance_with_a_previous_name())
    reply = admin.Preview(request, timeout=30)
    assert (reply.refused_reason, reply.refused_detail, len(reply.changes)) == ("phi-leak", "(0010,0010)", 0)
    short_key = profiles_pb2.PreviewRequest(profile="basic", key=b"short", dicom=to_bytes(ct_dataset()))
    assert _code(lambda: admin.Preview(short_key)) == grpc.StatusCode.INVALID_ARGUMENT


def test_preview_takes_an_instance_larger_than_grpcs_default_4_mb(admin: profiles_pb2_grpc.ProfileAdminStub) -> None:
    ds = ct_dataset()
    ds.Rows = ds.Columns = 1024
    ds.NumberOfFrames = 5
    ds.PixelData = bytes(1024 * 1024 * 2 * 5)  # 10 MiB of 16-bit pixels
    reply = admin.Preview(profiles_pb2.PreviewRequest(profile="basic", dicom=to_bytes(ds)), timeout=60)
    assert not reply.refused_reason and any(c.keyword == "PatientName" for c in reply.changes)
