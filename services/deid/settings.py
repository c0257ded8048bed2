from __future__ import annotations

from pydantic import Field

from services.common.settings import ServiceSettings

GIB = 1024**3


class DeidSettings(ServiceSettings):
    grpc_port: int = Field(15053, ge=0, le=65535)
    # The same setting (IMX_MAX_INFLATED_BYTES) as ingest's, which refuses larger ones at the door.
    max_inflated_bytes: int = Field(
        1 * GIB, ge=1024, le=4 * GIB, description="largest inflated size of a deflated data set; larger is quarantined"
    )
    # services/common/blob_splices.py: the fast path's output stored as its new header and a reference to
    # the input's Pixel Data (already durable in the store) instead of a whole copy. Off: written whole.
    deid_splice: bool = Field(
        True, description="store de-identified objects as a header spliced onto the stored input's pixel data"
    )
