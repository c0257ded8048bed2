"""The instance and blob references the unit tests put in events: a CT image by default, with the UIDs,
transfer syntax or modality a test needs. A blob's digest is a repeated hex pair, so a test names it."""

from __future__ import annotations

from services.proto_gen.imx.v1 import events_pb2 as pb

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"


def instance_ref(
    study: str = "1.2.3",
    series: str = "1.2.3.4",
    sop: str = "1.2.3.4.5",
    *,
    transfer_syntax: str = EXPLICIT_VR_LITTLE_ENDIAN,
    modality: str = "CT",
) -> pb.InstanceRef:
    return pb.InstanceRef(
        study_instance_uid=study,
        series_instance_uid=series,
        sop_instance_uid=sop,
        sop_class_uid=CT_IMAGE_STORAGE,
        transfer_syntax_uid=transfer_syntax,
        modality=modality,
    )


def blob_ref(hex_pair: str = "ab", size: int = 4096) -> pb.BlobRef:
    """A blob whose SHA-256 is `hex_pair` 32 times."""
    return pb.BlobRef(sha256=hex_pair * 32, size=size)
