"""Burned-in annotation is refused unless a device rule masks it; preview lists every change."""

from __future__ import annotations

from io import BytesIO

import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    RLELossless,
    SecondaryCaptureImageStorage,
    UltrasoundImageStorage,
)

from services.deid.engine import BASIC, BurnedInAnnotation, PixelRule, Profile, Region, deidentify, preview

from .builders import KEY, ct_dataset, to_bytes

RULE = PixelRule(regions=(Region(x=0, y=0, width=8, height=2),), manufacturer="ACME", rows=16, columns=16)


def _ultrasound(burned_in: str | None = None) -> bytes:
    ds = ct_dataset()
    ds.Modality, ds.SOPClassUID = "US", UltrasoundImageStorage
    del ds.BurnedInAnnotation
    if burned_in is not None:
        ds.BurnedInAnnotation = burned_in
    return to_bytes(ds)


@pytest.mark.parametrize("burned_in", [None, "YES"])
def test_ultrasound_without_an_explicit_no_is_refused(burned_in: str | None) -> None:
    with pytest.raises(BurnedInAnnotation):
        deidentify(_ultrasound(burned_in), BASIC, KEY)


def test_secondary_capture_and_flagged_ct_are_refused_but_an_explicit_no_passes() -> None:
    capture = ct_dataset()
    capture.SOPClassUID = SecondaryCaptureImageStorage
    del capture.BurnedInAnnotation
    with pytest.raises(BurnedInAnnotation):
        deidentify(to_bytes(capture), BASIC, KEY)
    flagged = ct_dataset()
    flagged.BurnedInAnnotation = "YES"
    with pytest.raises(BurnedInAnnotation):
        deidentify(to_bytes(flagged), BASIC, KEY)
    deidentify(_ultrasound("NO"), BASIC, KEY)


def test_a_matching_device_rule_masks_the_text_and_records_clean_pixel_data() -> None:
    profile = Profile("us-cleaned", pixel_rules=(RULE,))
    result = deidentify(_ultrasound("YES"), profile, KEY)
    out = dcmread(BytesIO(result.data))
    pixels = np.frombuffer(out.PixelData, "<u2").reshape(16, 16)
    original = np.frombuffer(ct_dataset().PixelData, "<u2").reshape(16, 16)
    assert result.pixels_cleaned
    assert not pixels[:2, :8].any()
    assert (pixels[2:, :] == original[2:, :]).all() and (pixels[:2, 8:] == original[:2, 8:]).all()
    assert out.BurnedInAnnotation == "NO"
    assert "113101" in [item.CodeValue for item in out.DeidentificationMethodCodeSequence]


def test_a_rule_for_another_device_does_not_apply() -> None:
    other = PixelRule(regions=RULE.regions, manufacturer="Someone Else")
    with pytest.raises(BurnedInAnnotation):
        deidentify(_ultrasound("YES"), Profile("other", pixel_rules=(other,)), KEY)


def test_preview_lists_the_changes_deidentify_makes() -> None:
    data = to_bytes(ct_dataset())
    changes = {change.keyword: change for change in preview(data, BASIC, KEY)}
    out = dcmread(BytesIO(deidentify(data, BASIC, KEY).data))
    assert changes["PatientName"].action == "Z"
    assert changes["PatientName"].before == "Thistlewood^Margery"
    assert changes["PatientName"].after == str(out.PatientName)
    assert changes["PatientAddress"].action == "X"
    assert changes["StudyInstanceUID"].after == out.StudyInstanceUID
    nested = [c for c in preview(data, BASIC, KEY) if c.keyword == "ReferencedSOPInstanceUID"]
    assert nested and nested[0].path == ((0x00081140, 0),)
    assert "SOPClassUID" not in changes  # well-known UIDs are not changes


def _compressed_ultrasound(syntax: str) -> tuple[bytes, np.ndarray]:
    """An 8-bit monochrome ultrasound frame with burned-in text, compressed; and its pixels."""
    ds = ct_dataset()
    ds.Modality, ds.SOPClassUID, ds.BurnedInAnnotation = "US", UltrasoundImageStorage, "YES"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    image = (np.arange(256, dtype=np.uint8).reshape(16, 16) // 2 + 64).astype(np.uint8)
    if syntax == RLELossless:
        ds.PixelData = image.tobytes()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.compress(RLELossless, encoding_plugin="pydicom", generate_instance_uid=False)
        return to_bytes(ds, RLELossless), image
    frame = BytesIO()
    Image.fromarray(image, mode="L").save(frame, format="JPEG", quality=95)
    ds.PixelData = encapsulate([frame.getvalue()])
    ds["PixelData"].VR = "OB"
    ds.LossyImageCompression = "01"
    decoded = np.asarray(Image.open(BytesIO(frame.getvalue())))
    return to_bytes(ds, JPEGBaseline8Bit), decoded


@pytest.mark.parametrize("syntax", [RLELossless, JPEGBaseline8Bit], ids=["rle", "jpeg-baseline"])
def test_compressed_pixels_are_decoded_masked_and_released_uncompressed(syntax: str) -> None:
    data, original = _compressed_ultrasound(syntax)
    result = deidentify(data, Profile("us-cleaned", pixel_rules=(RULE,)), KEY)
    out = dcmread(BytesIO(result.data))
    assert out.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian == result.transfer_syntax_uid
    assert result.pixels_cleaned and out.BurnedInAnnotation == "NO"
    pixels = out.pixel_array
    assert pixels.shape == (16, 16) and not pixels[:2, :8].any(), "the text region is blank"
    assert (pixels[2:, :] == original[2:, :]).all() and (pixels[:2, 8:] == original[:2, 8:]).all()


@pytest.mark.parametrize("syntax", [RLELossless, JPEGBaseline8Bit], ids=["rle", "jpeg-baseline"])
def test_an_element_after_compressed_pixels_does_not_bring_the_unmasked_pixels_along(syntax: str) -> None:
    """With Data Set Trailing Padding after Pixel Data the input was read whole, and the original
    encapsulated Pixel Data was written before the masked copy: two Pixel Data elements, the first
    the burned-in text as sent, in a file that said the pixels were cleaned."""
    import struct

    data, original = _compressed_ultrasound(syntax)
    padded = data + struct.pack("<HH2sHI", 0xFFFC, 0xFFFC, b"OB", 0, 4) + b"\0" * 4
    out_bytes = deidentify(padded, Profile("us-cleaned", pixel_rules=(RULE,)), KEY).data
    assert out_bytes.count(struct.pack("<HH", 0x7FE0, 0x0010)) == 1
    out = dcmread(BytesIO(out_bytes))
    assert not out.pixel_array[:2, :8].any(), "the text region is blank"
    assert (out.pixel_array[2:, :] == original[2:, :]).all()


def test_compressed_pixels_no_decoder_can_read_are_refused_as_burned_in() -> None:
    ds = ct_dataset()
    ds.Modality, ds.SOPClassUID, ds.BurnedInAnnotation = "US", UltrasoundImageStorage, "YES"
    ds.PixelData = encapsulate([b"\xff\x4f\xff\x51 not really a codestream"])
    ds["PixelData"].VR = "OB"
    with pytest.raises(BurnedInAnnotation):
        deidentify(to_bytes(ds, "1.2.840.10008.1.2.4.80"), Profile("us-cleaned", pixel_rules=(RULE,)), KEY)


def test_a_pixel_rule_whose_regions_miss_the_image_is_refused() -> None:
    """The regions lay past the image's edge: nothing was masked, and the copy said its pixels were
    cleaned. A profile whose rule gives the image's size is refused when a region reaches past it."""
    from services.deid.profile_documents import parse_pixel_rule

    ds = ct_dataset()
    ds.Modality, ds.SOPClassUID, ds.BurnedInAnnotation = "US", UltrasoundImageStorage, "YES"
    outside = PixelRule(regions=(Region(x=100, y=100, width=50, height=20),), modality="US")
    with pytest.raises(BurnedInAnnotation):
        deidentify(to_bytes(ds), Profile("us-missed", pixel_rules=(outside,)), KEY)
    document = {"modality": "US", "rows": 16, "columns": 16, "regions": [{"x": 8, "y": 0, "width": 8, "height": 2}]}
    assert parse_pixel_rule(document, "pixel_rules[0]").regions[0].width == 8  # profile_documents: saving
