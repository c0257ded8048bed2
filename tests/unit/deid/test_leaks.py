"""The release check: planted PHI anywhere in the output is caught and reported by tag only."""

from __future__ import annotations

import struct
from io import BytesIO

import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000Lossless, JPEGBaseline8Bit

from services.deid.engine import BASIC, RESEARCH, Action, PhiLeak, Profile, check_for_leaks, deidentify
from services.deid.engine.pixel_text import without_text_segments

from .builders import KEY, ct_dataset, to_bytes

PATIENT_NAME = 0x00100010
PRIVATE_NAME = 0x00191010  # (0019,xx10) under "ACME PRIVATE": holds the patient's surname


def test_phi_kept_in_a_private_tag_by_a_bad_override_is_caught() -> None:
    careless = Profile("careless", overrides={PRIVATE_NAME: Action.KEEP})
    with pytest.raises(PhiLeak) as caught:
        deidentify(to_bytes(ct_dataset()), careless, KEY)
    assert caught.value.tag == PRIVATE_NAME
    assert caught.value.source == PATIENT_NAME
    assert "Thistlewood" not in str(caught.value)
    assert "(0019,1010)" in str(caught.value)


@pytest.mark.parametrize("syntax", ["explicit", "implicit"])
def test_a_name_ending_a_value_followed_by_a_tag_that_reads_as_a_letter_is_caught(syntax: str) -> None:
    """In the encoded bytes, a value of even length is followed by the next element's tag: group 0x0032
    begins with the byte "2", which made "...Thistlewood2" no whole word, and the name went out."""
    ds = ct_dataset()
    ds.add_new(0x00281055, "LO", "Window for Thistlewood")  # kept (not in Table E.1-1); 22 bytes, unpadded
    requested = Dataset()
    requested.CodeValue, requested.CodingSchemeDesignator, requested.CodeMeaning = "CTHEAD", "L", "CT head"
    ds.RequestedProcedureCodeSequence = Sequence([requested])  # (0032,1064), kept, right after it
    with pytest.raises(PhiLeak) as caught:
        deidentify(to_bytes(ds, ImplicitVRLittleEndian if syntax == "implicit" else ExplicitVRLittleEndian), BASIC, KEY)
    assert caught.value.tag == 0x00281055 and caught.value.source == PATIENT_NAME


def test_a_name_starting_a_longer_word_is_not_a_leak() -> None:
    """A needle whole at one edge only sends the instance to the element-by-element search, which
    finds no whole word: released."""
    ds = ct_dataset()
    ds.add_new(0x00281055, "LO", "Thistlewoodside window")
    assert deidentify(to_bytes(ds), BASIC, KEY).data


@pytest.mark.parametrize("surname", ["Basic", "Clean", "Profile", "Temporal"])
def test_a_patient_named_like_the_method_the_engine_records_is_released_and_still_caught_elsewhere(
    surname: str,
) -> None:
    """The method's code sequence (0012,0064) names "Basic Application Confidentiality Profile", "Clean
    Descriptors Option" and so on: its nested Code Meaning was taken for the patient's name, and every
    instance of a patient called Basic or Clean was quarantined."""
    ds = ct_dataset()
    ds.PatientName = f"{surname}^Tom"
    assert deidentify(to_bytes(ds), RESEARCH, KEY).data
    ds.add_new(0x00281055, "LO", f"window for {surname}")  # kept: the name where it does not belong
    with pytest.raises(PhiLeak) as caught:
        deidentify(to_bytes(ds), RESEARCH, KEY)
    assert caught.value.tag == 0x00281055


def test_a_name_of_short_parts_is_found_as_written() -> None:
    """Wu^Li has no part of three letters: it was not looked for, and "CT head Wu Li" left under
    research unchanged. Parts that are not letters make no phrase ("CT^1" would make "CT 1" a name)."""
    ds = ct_dataset()
    ds.PatientName, ds.StudyDescription = "Wu^Li", "CT 1 head Wu Li"
    ds.OperatorsName = "CT^1"
    out = dcmread(BytesIO(deidentify(to_bytes(ds), RESEARCH, KEY).data))
    assert "Wu Li" not in out.StudyDescription and "CT 1 head" in out.StudyDescription
    ds.add_new(0x00281055, "LO", "window Li Wu")  # kept by every profile: the name in the other order
    with pytest.raises(PhiLeak) as caught:
        deidentify(to_bytes(ds), BASIC, KEY)
    assert caught.value.tag == 0x00281055 and caught.value.source == PATIENT_NAME
    ds[0x00281055].value = "window Wu, Li"  # family name first, as many systems print it
    with pytest.raises(PhiLeak) as comma:
        deidentify(to_bytes(ds), BASIC, KEY)
    assert comma.value.tag == 0x00281055 and comma.value.source == PATIENT_NAME


def test_a_senders_own_method_sequence_nested_in_a_kept_sequence_is_searched() -> None:
    """Only the engine's top-level method attributes are its own words: a sender's copy nested in a kept
    sequence, or a sender's (0028,0303) the engine did not write, was exempt and went out."""
    ds = ct_dataset()
    method = Dataset()
    method.CodeValue, method.CodingSchemeDesignator = "113100", "DCM"
    method.CodeMeaning = "Thistlewood 12 Acacia Avenue"
    requested = Dataset()
    requested.CodeValue, requested.CodingSchemeDesignator, requested.CodeMeaning = "CTHEAD", "L", "CT head"
    requested.DeidentificationMethodCodeSequence = Sequence([method])
    ds.RequestedProcedureCodeSequence = Sequence([requested])  # (0032,1064): kept
    with pytest.raises(PhiLeak) as nested:
        deidentify(to_bytes(ds), BASIC, KEY)
    assert nested.value.tag == 0x00080104
    ds = ct_dataset()
    ds.LongitudinalTemporalInformationModified = "THISTLEWOOD"  # BASIC writes none: the sender's stays
    with pytest.raises(PhiLeak) as top:
        deidentify(to_bytes(ds), BASIC, KEY)
    assert top.value.tag == 0x00280303


def test_phi_in_a_deeply_nested_unlisted_attribute_is_caught() -> None:
    ds = ct_dataset()
    inner = Dataset()
    inner.CodeValue, inner.CodingSchemeDesignator = "X1", "99TEST"
    inner.CodeMeaning = "seen by Dr Hughes"  # the referring physician's family name
    middle = Dataset()
    middle.ConceptNameCodeSequence = Sequence([inner])
    ds.ProcedureCodeSequence = Sequence([middle])
    with pytest.raises(PhiLeak) as caught:
        deidentify(to_bytes(ds), BASIC, KEY)
    assert caught.value.tag == 0x00080104  # Code Meaning
    assert caught.value.source == 0x00080090  # Referring Physician's Name


def test_check_for_leaks_reports_tags_for_a_raw_copy_of_the_original() -> None:
    original = ct_dataset()
    data = to_bytes(original)
    leaks = check_for_leaks(original, data, dcmread(BytesIO(data)), BASIC)
    found = {leak.tag for leak in leaks}
    assert {0x00100010, 0x00100020, 0x00080080, 0x0020000D} <= found
    assert all(isinstance(leak.source, int) for leak in leaks)


def test_short_values_and_partial_words_are_not_leaks() -> None:
    ds = ct_dataset()
    ds.PatientName = "Li^Al"  # tokens under three letters are not searched for
    ds.PatientSex = "M"
    ds.BodyPartExamined = "AL"
    ds.ImageComments = "Alignment checked"
    deidentify(to_bytes(ds), BASIC, KEY)


def test_an_already_deidentified_instance_passes_again() -> None:
    once = deidentify(to_bytes(ct_dataset()), BASIC, KEY).data
    twice = deidentify(once, BASIC, KEY)
    assert dcmread(BytesIO(twice.data)).PatientIdentityRemoved == "YES"


def test_clean_descriptors_removes_known_identifiers_from_kept_text() -> None:
    from services.deid.engine import RESEARCH

    out = dcmread(BytesIO(deidentify(to_bytes(ct_dataset()), RESEARCH, KEY).data))
    assert out.StudyDescription == "CT HEAD for"
    assert out.SeriesDescription == "Axial 5mm"


def test_non_ascii_names_are_found_in_the_instance_character_set() -> None:
    ds = ct_dataset()
    ds.PatientName = "Müllerová^Zoë"
    ds.private_block(0x0019, "ACME PRIVATE")[0x10].value = "Müllerová"
    careless = Profile("careless", overrides={PRIVATE_NAME: Action.KEEP})
    with pytest.raises(PhiLeak) as caught:
        deidentify(to_bytes(ds), careless, KEY)
    assert caught.value.source == PATIENT_NAME


def _jpeg_ct(comment: bytes) -> bytes:
    """The CT with its pixels as one JPEG baseline frame whose COM segment says ``comment``."""
    ds = ct_dataset()
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    frame = BytesIO()
    Image.fromarray(np.full((16, 16), 90, np.uint8), mode="L").save(frame, format="JPEG", comment=comment)
    ds.PixelData = encapsulate([frame.getvalue()])
    ds["PixelData"].VR = "OB"
    ds.LossyImageCompression = "01"
    return to_bytes(ds, JPEGBaseline8Bit)


def _j2k_ct(comment: bytes) -> bytes:
    """The CT with a JPEG 2000 codestream whose main header has a COM marker saying ``comment``."""
    ds = ct_dataset()
    siz = b"\xff\x51" + struct.pack(">H", 6) + b"\x00" * 4
    com = b"\xff\x64" + struct.pack(">HH", 4 + len(comment), 1) + comment
    ds.PixelData = encapsulate([b"\xff\x4f" + siz + com + b"\xff\x90\x00\x0a" + b"\x00" * 8 + b"\xff\xd9"])
    ds["PixelData"].VR = "OB"
    return to_bytes(ds, JPEG2000Lossless)


def test_a_name_in_a_comment_of_a_jpeg_2000_codestream_is_caught() -> None:
    with pytest.raises(PhiLeak) as caught:
        deidentify(_j2k_ct(b"scanned for Margery Thistlewood"), BASIC, KEY)
    assert (caught.value.tag, caught.value.source) == (0x7FE00010, PATIENT_NAME)
    assert "Thistlewood" not in str(caught.value)
    released = deidentify(_j2k_ct(b"encoder 1.0"), BASIC, KEY)  # a harmless comment passes untouched
    assert b"encoder 1.0" in released.data


@pytest.mark.parametrize("fragments", [1, 2, 3])
def test_a_frame_split_over_fragments_decodes_as_before_without_its_text_segments(fragments: int) -> None:
    """A removed segment of odd length is made up by a fill byte before the next marker: a pad byte at the
    end of the first fragment of a split frame lay inside the image data and changed its pixels."""
    exif = Image.Exif()
    exif[0x013B] = "Thistlewood"  # Artist
    frames, decoded = [], []
    for seed in (1, 2):
        pixels = np.random.default_rng(seed).integers(0, 255, (64, 64), dtype=np.uint8)
        for comment in (b"odd", b"even"):  # one of the two makes an odd count removed
            frame = BytesIO()
            Image.fromarray(pixels, mode="L").save(frame, format="JPEG", exif=exif, comment=comment)
            frames.append(frame.getvalue())
            decoded.append(np.asarray(Image.open(BytesIO(frame.getvalue()))))
    value = encapsulate(frames, fragments_per_frame=fragments, has_bot=True)
    stripped = without_text_segments(value)
    assert stripped is not None and b"Thistlewood" not in stripped and b"odd" not in stripped
    kept = list(generate_frames(stripped, number_of_frames=len(frames)))
    for before, after in zip(decoded, kept, strict=True):
        assert np.array_equal(before, np.asarray(Image.open(BytesIO(after))))


@pytest.mark.parametrize("profile", [BASIC, RESEARCH], ids=["basic", "research"])
def test_the_text_segments_of_jpeg_frames_are_removed_and_the_image_kept(profile: Profile) -> None:
    """Exif (its dates, the photographer, GPS) and comments in JPEG frames are not the image: they went
    out under every profile, the leak check knowing neither dates nor the UTF-16 of Exif's XP tags.
    Every other APPn and COM goes; the frames decode as before and the offset table finds each."""
    ds = ct_dataset()
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation, ds.NumberOfFrames = 7, 0, 2
    exif = Image.Exif()
    exif[0x0132], exif[0x013B] = "2024:03:15 10:15:00", "Thistlewood"  # DateTime, Artist
    frames = []
    for shade, comment in ((90, b"taken for Margery Thistlewood"), (150, "Thistlewood".encode("utf-16-le"))):
        frame = BytesIO()
        Image.fromarray(np.full((16, 16), shade, np.uint8), mode="L").save(
            frame, format="JPEG", exif=exif, comment=comment
        )
        frames.append(frame.getvalue())
    ds.PixelData = encapsulate(frames, has_bot=True)
    ds["PixelData"].VR = "OB"
    ds.LossyImageCompression = "01"
    data = to_bytes(ds, JPEGBaseline8Bit)
    assert b"Thistlewood" in data and b"2024:03:15" in data

    out = deidentify(data, profile, KEY).data
    assert b"Thistlewood" not in out and "Thistlewood".encode("utf-16-le") not in out and b"2024:03:15" not in out
    released = dcmread(BytesIO(out))
    kept = list(generate_frames(released.PixelData, number_of_frames=2))
    assert [np.asarray(Image.open(BytesIO(f))).mean() for f in kept] == [
        np.asarray(Image.open(BytesIO(f))).mean() for f in frames
    ]
    assert all(len(f) % 2 == 0 for f in kept)
    value = released.PixelData
    (table_length,) = struct.unpack_from("<I", value, 4)
    offsets = struct.unpack_from(f"<{table_length // 4}I", value, 8)
    first = 8 + table_length
    assert [value[first + o : first + o + 4] for o in offsets] == [b"\xfe\xff\x00\xe0"] * 2
    assert offsets[1] == 8 + len(kept[0]), "the second frame's item, after the first's shorter one"


@pytest.mark.parametrize("how", ["fast path", "trailing element", "big endian"])
def test_a_preamble_carrying_phi_is_never_released(how: str) -> None:
    """PS3.10 7.1 leaves the preamble to the writer: the full path (an element after Pixel Data, big
    endian input; `imx deid`, the engine's API) copied the sender's 128 bytes into the output."""
    from pydicom.uid import ExplicitVRBigEndian

    preamble = b"PATIENT Thistlewood Margery PID0012345 DOB 19500607".ljust(128, b"\0")
    if how == "big endian":
        data = preamble + to_bytes(ct_dataset(), ExplicitVRBigEndian)[128:]
    else:
        data = preamble + to_bytes(ct_dataset())[128:]
    if how == "trailing element":
        data += struct.pack("<HH2sHI", 0xFFFC, 0xFFFC, b"OB", 0, 4) + b"\0" * 4
    out = deidentify(data, BASIC, KEY).data
    assert out[:128] == bytes(128) and b"Thistlewood" not in out


@pytest.mark.parametrize("charset", ["ISO_IR 100", "ISO_IR 192"])
@pytest.mark.parametrize("meaning", ["CT KOPF MÜLLER", "CT kopf müller", "CT Kopf Jörg", "CT KOPF JÖRG"])
def test_a_name_with_letters_beyond_ascii_is_caught_in_any_case(charset: str, meaning: str) -> None:
    """The byte scan folded ASCII letters only: Müller^Jörg written in capitals in a kept code meaning
    was released, though the same words capitalised as the name was were caught."""
    ds = ct_dataset()
    ds.SpecificCharacterSet = charset
    ds.PatientName = "Müller^Jörg"
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = "X1", "99L", meaning
    ds.ProcedureCodeSequence = Sequence([item])
    with pytest.raises(PhiLeak):
        deidentify(to_bytes(ds), BASIC, KEY)


@pytest.mark.parametrize("undefined_length", [False, True])
def test_a_standard_sequence_written_as_un_is_de_identified_like_any_other(undefined_length: bool) -> None:
    """PS3.5 6.2.2: a system that did not know an attribute writes it with VR UN (a sequence's items then
    in implicit VR). Scheduled Procedure Step Sequence so written went out with its performing
    physician's name, date, station and step ID under every profile: taken for unknown bytes."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    from services.deid.engine import BUILTIN_PROFILES

    item = Dataset()
    item.ScheduledPerformingPhysicianName = "Quixley^Barnaby"
    item.ScheduledProcedureStepStartDate = "20240314"
    item.ScheduledStationAETitle = "NWPCTSCANNER"
    item.ScheduledProcedureStepID = "SPSX998877"
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, True
    write_dataset(buffer, item)
    items = struct.pack("<HHI", 0xFFFE, 0xE000, len(buffer.getvalue())) + buffer.getvalue()
    if undefined_length:
        element = struct.pack("<HH2sHI", 0x0040, 0x0100, b"UN", 0, 0xFFFFFFFF) + items
        element += struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    else:
        element = struct.pack("<HH2sHI", 0x0040, 0x0100, b"UN", 0, len(items)) + items
    data = to_bytes(ct_dataset())
    at = data.find(struct.pack("<HH", 0x0040, 0x0275) + b"SQ")  # the next attribute in tag order
    data = data[:at] + element + data[at:]
    for profile in (BUILTIN_PROFILES["basic"], BUILTIN_PROFILES["research"]):
        out = deidentify(data, profile, KEY).data
        for planted in (b"Quixley", b"NWPCTSCANNER", b"20240314", b"SPSX998877"):
            assert planted not in out, (profile.name, planted)
        assert dcmread(BytesIO(out))[0x00400100].VR == "SQ"


def test_a_standard_sequence_written_as_un_too_long_to_convert_is_refused_not_released() -> None:
    """pydicom reads a UN value as its dictionary VR only under 64 KiB: a longer one stayed UN and went out
    unread (1000 items of names, dates, IDs)."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    from services.deid.engine import NotDeidentifiable

    item = Dataset()
    item.ScheduledPerformingPhysicianName = "Quixley^Barnaby"
    item.ScheduledProcedureStepID = "SPSX998877"
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, True
    write_dataset(buffer, item)
    items = (struct.pack("<HHI", 0xFFFE, 0xE000, len(buffer.getvalue())) + buffer.getvalue()) * 2000
    assert len(items) > 0xFFFF
    data = to_bytes(ct_dataset())
    at = data.find(struct.pack("<HH", 0x0040, 0x0275) + b"SQ")
    data = data[:at] + struct.pack("<HH2sHI", 0x0040, 0x0100, b"UN", 0, len(items)) + items + data[at:]
    with pytest.raises(NotDeidentifiable):
        deidentify(data, BASIC, KEY)
