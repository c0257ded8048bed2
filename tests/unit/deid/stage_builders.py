"""InstanceRouted events and instances for the deid stage's tests (unit and integration)."""

from __future__ import annotations

from io import BytesIO

from pydicom import dcmread
from pydicom.dataset import Dataset

from services.common.blob_store import BlobStore
from services.proto_gen.imx.v1 import events_pb2

from .builders import ct_dataset, to_bytes

PATIENT_NAME = "Thistlewood^Margery"
KEEP_PATIENT_NAME = {"(0010,0010)": "K"}


def instance_with_a_previous_name() -> bytes:
    """A CT whose patient's name is also in Other Patient Names (as in many real archives): a profile
    that keeps Patient Name releases a value the Basic Profile removes elsewhere."""
    ds: Dataset = ct_dataset()
    ds.OtherPatientNames = PATIENT_NAME
    return to_bytes(ds)


def routed_event(
    blobs: BlobStore, data: bytes, profile: str, partner_id: str = "research-a", version: int = 0, event: str = "e1"
) -> events_pb2.InstanceRouted:
    sha = blobs.put(data)
    ds = dcmread(BytesIO(data), stop_before_pixels=True)
    return events_pb2.InstanceRouted(
        meta=events_pb2.EventMeta(event_id=event, occurred_at_ms=1, ingested_at_ms=1),
        instance=events_pb2.InstanceRef(
            study_instance_uid=str(ds.StudyInstanceUID),
            series_instance_uid=str(ds.SeriesInstanceUID),
            sop_instance_uid=str(ds.SOPInstanceUID),
            sop_class_uid=str(ds.SOPClassUID),
            transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
            modality=str(ds.Modality),
        ),
        blob=events_pb2.BlobRef(sha256=sha, size=len(data)),
        source_org="trust-a",
        route_id="route-1",
        partner_id=partner_id,
        profile=profile,
        profile_version=version,
    )
