"""Deterministic synthetic DICOM studies with realistic, fictional PHI in the usual places.

Everything is a function of (seed, modality, n_instances, source): the same arguments give
byte-identical Part 10 files, so tests and benchmarks can search outputs for the planted PHI.
Identifiers are fictional but well-formed: NHS numbers come from the 999 test range, telephone
numbers from Ofcom's drama range (01632 960xxx), UIDs are 2.25 name-based UUIDs (PS3.5 B.2).
CT, MR, CR and DX say BurnedInAnnotation NO; US says YES and carries a white block standing in
for burned-in text, so routing can be tested against it.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from types import MappingProxyType
from typing import Literal, get_args

import numpy as np
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import UID, ExplicitVRLittleEndian

from services.common.dicom.part10 import dataset_to_bytes

Modality = Literal["CT", "MR", "CR", "DX", "US"]
MODALITIES: tuple[Modality, ...] = get_args(Modality)

# One namespace for every synthetic UID: uuid5(namespace, path) is a name-based UUID, which is
# exactly what the 2.25 root wants (PS3.5 B.2), and is stable across runs and machines.
_UID_NAMESPACE = uuid.UUID("6f1d2a7e-6c8e-5b7a-9d3e-1a2b3c4d5e6f")
IMPLEMENTATION_CLASS_UID = f"2.25.{uuid.uuid5(_UID_NAMESPACE, 'imx/implementation').int}"
IMPLEMENTATION_VERSION_NAME = "IMX_SYNTH_1"
PRIVATE_CREATOR = "IMX SYNTHETIC"
PRIVATE_GROUP = 0x0011

_FAMILY = ("SMITH", "JONES", "TAYLOR", "BROWN", "WILSON", "DAVIES", "PATEL", "WRIGHT", "OKAFOR", "KHAN", "NOWAK")
_GIVEN_F = ("OLIVIA", "AMELIA", "ISLA", "AVA", "MIA", "GRACE", "PRIYA", "SIOBHAN", "EMILY")
_GIVEN_M = ("OLIVER", "GEORGE", "HARRY", "JACK", "NOAH", "ARJUN", "CALLUM", "TOMASZ", "OSCAR")
_STREETS = ("Mill Lane", "Church Road", "Station Road", "Victoria Street", "Park Avenue", "High Street")
_TOWNS = ("Exampleton", "Sampleford", "Testbury", "Mockington", "Fabricham", "Placeholder Bay")
_CLINICIANS = ("HUGHES^ANNA^^DR", "OKONJO^DAVID^^DR", "FRASER^MORAG^^DR", "LI^WEI^^DR", "SHAH^NEHA^^DR")
_RADIOGRAPHERS = ("BAKER^TOM", "REID^FIONA", "COSTA^ANA", "MORGAN^RHYS", "DOYLE^KATE")


@dataclass(frozen=True)
class _Kind:
    """What differs by modality: SOP class, matrix, sampling, series layout, typical body parts."""

    sop_class_uid: str
    rows: int
    columns: int
    bits_stored: int
    samples: int
    series: int
    instances: tuple[int, int]  # typical range per study, used by write_demo_data
    body_parts: tuple[str, ...]
    model: str


_KINDS: Mapping[str, _Kind] = MappingProxyType(
    {
        "CT": _Kind(
            "1.2.840.10008.5.1.4.1.1.2", 512, 512, 12, 1, 2, (20, 40), ("CHEST", "ABDOMEN", "HEAD"), "SynthCT 64"
        ),
        "MR": _Kind(
            "1.2.840.10008.5.1.4.1.1.4", 256, 256, 12, 1, 2, (12, 24), ("HEAD", "KNEE", "LSPINE"), "SynthMR 1.5T"
        ),
        "CR": _Kind("1.2.840.10008.5.1.4.1.1.1", 1024, 1024, 12, 1, 2, (1, 2), ("CHEST",), "SynthCR Reader"),
        "DX": _Kind("1.2.840.10008.5.1.4.1.1.1.1", 1024, 1024, 12, 1, 2, (1, 2), ("CHEST",), "SynthDR Flat"),
        "US": _Kind("1.2.840.10008.5.1.4.1.1.6.1", 480, 640, 8, 3, 1, (2, 6), ("ABDOMEN",), "SynthUS Cart"),
    }
)


@dataclass(frozen=True)
class StudyPlan:
    """Everything chosen for one study before any pixel is drawn; cheap to make."""

    seed: int
    modality: Modality
    n_instances: int
    source: str
    patient_name: str
    patient_id: str
    nhs_number: str
    birth_date: str
    sex: str
    age: str
    address: str
    telephone: str
    referring: str
    performing: str
    operator: str
    institution: str
    institution_address: str
    station: str
    accession: str
    study_id: str
    study_date: str
    study_time: str
    acquisition_datetime: str
    body_part: str
    description: str
    requested_procedure_id: str
    scheduled_step_id: str
    device_serial: str

    def uid(self, *path: object) -> str:
        """A UID for one object of this study, e.g. uid("series", 2); unique per (study, path)."""
        name = "/".join(str(p) for p in (self.seed, self.source, self.modality, *path))
        return f"2.25.{uuid.uuid5(_UID_NAMESPACE, name).int}"

    @property
    def study_instance_uid(self) -> str:
        return self.uid("study")

    def phi(self) -> dict[str, str]:
        """Identifying values planted in every instance, by where they sit; for leak searches."""
        private = f"({PRIVATE_GROUP:04X},{PRIVATE_CREATOR})"
        return {
            "PatientName": self.patient_name,
            "PatientID": self.patient_id,
            "PatientBirthDate": self.birth_date,
            "PatientSex": self.sex,
            "PatientAge": self.age,
            "PatientAddress": self.address,
            "PatientTelephoneNumbers": self.telephone,
            "OtherPatientIDsSequence.PatientID": self.nhs_number,
            "IssuerOfPatientID": self.source,
            "ReferringPhysicianName": self.referring,
            "PerformingPhysicianName": self.performing,
            "OperatorsName": self.operator,
            "InstitutionName": self.institution,
            "InstitutionAddress": self.institution_address,
            "StationName": self.station,
            "DeviceSerialNumber": self.device_serial,
            "AccessionNumber": self.accession,
            "StudyID": self.study_id,
            "StudyDate": self.study_date,
            "StudyTime": self.study_time,
            "AcquisitionDateTime": self.acquisition_datetime,
            "StudyDescription": self.description,
            "RequestAttributesSequence.RequestedProcedureID": self.requested_procedure_id,
            "RequestAttributesSequence.ScheduledProcedureStepID": self.scheduled_step_id,
            f"{private}10 name": self.patient_name,
            f"{private}11 id": self.nhs_number,
        }


def _nhs_number(rng: random.Random) -> str:
    """A modulus-11 valid NHS number from the 999 range, which NHS England reserves for testing."""
    while True:
        digits = [9, 9, 9] + [rng.randrange(10) for _ in range(6)]
        check = 11 - sum(d * (10 - i) for i, d in enumerate(digits)) % 11
        if check != 10:
            return "".join(map(str, digits)) + str(0 if check == 11 else check)


def plan_study(seed: int, modality: Modality, n_instances: int, source: str) -> StudyPlan:
    """Choose the patient, the people, the place and the dates for one study, from the seed."""
    if modality not in _KINDS:
        raise ValueError(f"unsupported modality {modality!r}")
    if n_instances < 1:
        raise ValueError("n_instances must be at least 1")
    # A str seed is hashed with SHA-512 by random.seed: stable across runs and PYTHONHASHSEED.
    rng = random.Random(f"imx-synthetic/{seed}/{source}/{modality}")
    sex = rng.choice("FM")
    given = rng.choice(_GIVEN_F if sex == "F" else _GIVEN_M)
    study_day = date(2019, 1, 1) + timedelta(days=rng.randrange(6 * 365))
    birth = study_day - timedelta(days=rng.randrange(18 * 365, 90 * 365))
    years = study_day.year - birth.year - ((study_day.month, study_day.day) < (birth.month, birth.day))
    start = datetime.combine(study_day, datetime.min.time()) + timedelta(seconds=rng.randrange(7 * 3600, 20 * 3600))
    town = rng.choice(_TOWNS)
    site = "".join(c for c in source.upper() if c.isalnum())[:4] or "IMX"
    body_part = rng.choice(_KINDS[modality].body_parts)
    return StudyPlan(
        seed=seed,
        modality=modality,
        n_instances=n_instances,
        source=source,
        patient_name=f"{rng.choice(_FAMILY)}^{given}^{rng.choice('ABCDEJLMR')}",
        patient_id=f"{site}{rng.randrange(10**7):07d}",
        nhs_number=_nhs_number(rng),
        birth_date=birth.strftime("%Y%m%d"),
        sex=sex,
        age=f"{years:03d}Y",
        address=f"{rng.randrange(1, 200)} {rng.choice(_STREETS)}, {rng.choice(_TOWNS)} "
        f"EX{rng.randrange(1, 30)} {rng.randrange(10)}{rng.choice('ABDEFGHJ')}{rng.choice('LNPQRSTU')}",
        telephone=f"01632 960{rng.randrange(1000):03d}",
        referring=rng.choice(_CLINICIANS),
        performing=rng.choice(_CLINICIANS),
        operator=rng.choice(_RADIOGRAPHERS),
        institution=f"{town} General Hospital",
        institution_address=f"Hospital Road, {town} EX{rng.randrange(30, 60)} 1AA",
        station=f"{site}{modality}{rng.randrange(1, 10):02d}",
        accession=f"{site}{rng.randrange(10**8):08d}",
        study_id=str(rng.randrange(1000, 99999)),
        study_date=start.strftime("%Y%m%d"),
        study_time=start.strftime("%H%M%S"),
        acquisition_datetime=(start + timedelta(seconds=90)).strftime("%Y%m%d%H%M%S.000000"),
        body_part=body_part,
        description=f"{modality} {body_part}",
        requested_procedure_id=f"RP{rng.randrange(10**7):07d}",
        scheduled_step_id=f"SPS{rng.randrange(10**7):07d}",
        device_serial=f"SN{rng.randrange(10**6):06d}",
    )


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _item(**values: object) -> Dataset:
    item = Dataset()
    for keyword, value in values.items():
        setattr(item, keyword, value)
    return item


def _header(plan: StudyPlan, series: int, number: int, when: datetime) -> Dataset:
    """Patient, study, series, equipment, acquisition and SOP common modules (PS3.3 C.7, C.12)."""
    kind = _KINDS[plan.modality]
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    # Value 3 is required for CT and MR (PS3.3 C.8.2.1.1.1, C.8.3.1.1.1).
    third = {"CT": ["AXIAL"], "MR": ["OTHER"]}.get(plan.modality, [])
    ds.ImageType = ["ORIGINAL", "PRIMARY", *third]
    ds.InstanceCreationDate, ds.InstanceCreationTime = when.strftime("%Y%m%d"), when.strftime("%H%M%S")
    ds.SOPClassUID = kind.sop_class_uid
    ds.SOPInstanceUID = plan.uid("instance", series, number)
    ds.StudyDate, ds.SeriesDate, ds.ContentDate = plan.study_date, plan.study_date, when.strftime("%Y%m%d")
    ds.AcquisitionDateTime = plan.acquisition_datetime
    ds.StudyTime, ds.SeriesTime = plan.study_time, (when - timedelta(seconds=number)).strftime("%H%M%S")
    ds.ContentTime = when.strftime("%H%M%S.%f")
    ds.AccessionNumber = plan.accession
    ds.IssuerOfAccessionNumberSequence = Sequence([_item(LocalNamespaceEntityID=plan.source)])
    ds.Modality = plan.modality
    ds.Manufacturer, ds.InstitutionName = "Synthetica Medical", plan.institution
    ds.InstitutionAddress = plan.institution_address
    ds.ReferringPhysicianName = plan.referring
    ds.StationName = plan.station
    ds.StudyDescription = plan.description
    ds.ProcedureCodeSequence = Sequence([_code(f"{plan.modality}{plan.body_part[:4]}", "99IMX", plan.description)])
    ds.SeriesDescription = f"{plan.description} series {series}"
    ds.InstitutionalDepartmentName = "Radiology"
    ds.PerformingPhysicianName, ds.OperatorsName = plan.performing, plan.operator
    ds.ManufacturerModelName = kind.model
    ds.ReferencedPatientSequence = Sequence(
        [_item(ReferencedSOPClassUID="1.2.840.10008.3.1.2.1.1", ReferencedSOPInstanceUID=plan.uid("patient"))]
    )
    ds.PatientName, ds.PatientID, ds.IssuerOfPatientID = plan.patient_name, plan.patient_id, plan.source
    ds.PatientBirthDate, ds.PatientSex, ds.PatientAge = plan.birth_date, plan.sex, plan.age
    ds.OtherPatientIDsSequence = Sequence(
        [_item(PatientID=plan.nhs_number, IssuerOfPatientID="NHS", TypeOfPatientID="TEXT")]
    )
    ds.PatientSize, ds.PatientWeight = "1.72", "74"
    ds.PatientAddress, ds.PatientTelephoneNumbers = plan.address, plan.telephone
    ds.BodyPartExamined = plan.body_part
    ds.DeviceSerialNumber, ds.SoftwareVersions = plan.device_serial, "4.2.1"
    ds.ProtocolName = plan.description
    ds.StudyInstanceUID = plan.study_instance_uid
    ds.SeriesInstanceUID = plan.uid("series", series)
    ds.StudyID, ds.SeriesNumber, ds.AcquisitionNumber, ds.InstanceNumber = plan.study_id, series, 1, number
    ds.BurnedInAnnotation = "YES" if plan.modality == "US" else "NO"
    ds.PerformedProcedureStepStartDate = plan.study_date
    ds.PerformedProcedureStepStartTime = plan.study_time
    ds.PerformedProcedureStepID = plan.scheduled_step_id
    ds.ReferencedPerformedProcedureStepSequence = Sequence(
        [_item(ReferencedSOPClassUID="1.2.840.10008.3.1.2.3.3", ReferencedSOPInstanceUID=plan.uid("mpps"))]
    )
    ds.RequestAttributesSequence = Sequence(
        [
            _item(
                AccessionNumber=plan.accession,
                StudyInstanceUID=plan.study_instance_uid,
                RequestedProcedureDescription=plan.description,
                ScheduledProcedureStepDescription=plan.description,
                ScheduledProtocolCodeSequence=Sequence([_code(f"P{plan.modality}1", "99IMX", plan.description)]),
                ScheduledProcedureStepID=plan.scheduled_step_id,
                RequestedProcedureID=plan.requested_procedure_id,
                ReasonForTheRequestedProcedure=f"Referred by {plan.referring.split('^')[0]}: ? pathology",
            )
        ]
    )
    block = ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR, create=True)
    block.add_new(0x10, "LO", plan.patient_name)
    block.add_new(0x11, "LO", plan.nhs_number)
    block.add_new(0x12, "DS", str(plan.seed % 1000))
    return ds


def _cross_sectional(ds: Dataset, plan: StudyPlan, series: int, number: int) -> None:
    """Frame of reference and image plane (PS3.3 C.7.4.1, C.7.6.2) plus CT/MR acquisition values."""
    thickness = 5.0 if series == 1 else 1.25
    ds.FrameOfReferenceUID = plan.uid("frame-of-reference")
    ds.PositionReferenceIndicator = ""
    ds.PatientPosition = "HFS"
    ds.SliceThickness = f"{thickness}"
    ds.SpacingBetweenSlices = f"{thickness}"
    fov = 350.0 if plan.modality == "CT" else 240.0
    spacing = fov / _KINDS[plan.modality].columns
    z = -100.0 + thickness * (number - 1)
    ds.ImagePositionPatient = [f"{-fov / 2:.1f}", f"{-fov / 2:.1f}", f"{z:.2f}"]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.SliceLocation = f"{z:.2f}"
    ds.PixelSpacing = [f"{spacing:.6f}", f"{spacing:.6f}"]
    if plan.modality == "CT":
        ds.KVP, ds.DataCollectionDiameter, ds.ReconstructionDiameter = "120", "500", f"{fov:.0f}"
        ds.DistanceSourceToDetector, ds.DistanceSourceToPatient = "1085.6", "595"
        ds.GantryDetectorTilt, ds.TableHeight, ds.RotationDirection = "0", "150", "CW"
        ds.ExposureTime, ds.XRayTubeCurrent, ds.Exposure = "500", "250", "125"
        ds.FilterType, ds.ConvolutionKernel = "BODY FILTER", "STANDARD"
        ds.GeneratorPower, ds.FocalSpots = "30", "1.2"
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "-1024", "1", "HU"
        ds.WindowCenter, ds.WindowWidth = "40", "400"
    else:
        ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions = "SE", ["SK", "SP"], ""
        ds.MRAcquisitionType, ds.SequenceName = "2D", "*se2d1"
        ds.RepetitionTime, ds.EchoTime, ds.EchoTrainLength = "500", "15", 1
        ds.MagneticFieldStrength, ds.ImagingFrequency, ds.ImagedNucleus = "1.5", "63.87", "1H"
        ds.NumberOfAverages, ds.EchoNumbers, ds.FlipAngle = "1", 1, "90"
        ds.PixelBandwidth, ds.ReceiveCoilName, ds.TransmitCoilName = "130", "HEAD", "BODY"
        ds.AcquisitionMatrix = [0, 256, 192, 0]
        ds.InPlanePhaseEncodingDirection = "ROW"
        ds.WindowCenter, ds.WindowWidth = "600", "1200"


def _projection(ds: Dataset, plan: StudyPlan, series: int) -> None:
    """CR/DX view and exposure values, DX presentation attributes (PS3.3 C.8.1, C.8.11)."""
    ds.ViewPosition = "PA" if series == 1 else "LL"
    ds.PatientOrientation = ["L", "F"] if series == 1 else ["P", "F"]
    ds.KVP, ds.DistanceSourceToDetector, ds.ExposureTime = "110", "1800", "10"
    ds.XRayTubeCurrent, ds.Exposure = "200", "2"
    ds.ImagerPixelSpacing = ["0.350000", "0.350000"]
    ds.WindowCenter, ds.WindowWidth = "2048", "4096"
    if plan.modality == "CR":
        ds.PlateID = f"PL{plan.device_serial[-4:]}"
        return
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.ImageLaterality = "U"
    ds.AnatomicRegionSequence = Sequence([_code("51185008", "SCT", "Chest")])
    ds.PixelIntensityRelationship, ds.PixelIntensityRelationshipSign = "LOG", 1
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "0", "1", "US"
    ds.PresentationLUTShape, ds.LossyImageCompression = "IDENTITY", "00"
    ds.DetectorType, ds.PixelSpacing = "SCINTILLATOR", ["0.350000", "0.350000"]
    ds.PositionerType = "COLUMN"
    view = ("399348003", "postero-anterior") if series == 1 else ("399173006", "left lateral")
    ds.ViewCodeSequence = Sequence([_code(view[0], "SCT", view[1])])
    ds.AcquisitionContextSequence = Sequence()


def _pixels(plan: StudyPlan, series: int, number: int) -> np.ndarray:
    """A cheap phantom (body, lungs or ventricles, spine) that moves with the slice, plus seeded noise.

    float32 grids and in-place painting keep a 512x512 slice at about a millisecond.
    """
    kind = _KINDS[plan.modality]
    rng = np.random.default_rng(int(plan.uid("instance", series, number)[len("2.25.") :]))
    yy, xx = (g.astype(np.float32) for g in np.ogrid[-1.0 : 1.0 : kind.rows * 1j, -1.0 : 1.0 : kind.columns * 1j])
    if kind.samples == 3:
        fan = (xx**2 + (yy + 1.0) ** 2 < 1.6) & (np.abs(xx) < (yy + 1.0) * 0.8)
        grey = rng.integers(60, 180, (kind.rows, kind.columns), dtype=np.uint8)
        grey[~fan] = 0
        grey[:24, :200] = 255  # stands in for burned-in text, hence BurnedInAnnotation YES
        return np.repeat(grey[:, :, None], 3, axis=2)
    high = (1 << kind.bits_stored) - 1
    phase = np.float32(number / plan.n_instances)
    image = rng.integers(0, high // 64 + 1, (kind.rows, kind.columns), dtype=np.uint16)
    body = (xx / 0.85) ** 2 + (yy / (0.65 + 0.05 * np.sin(phase * 6.28))) ** 2 < 1.0
    image[body] += np.uint16(high * 0.26)
    image[((np.abs(xx) - 0.35) ** 2 / 0.06 + yy**2 / (0.2 + 0.1 * phase) < 1.0) & body] -= np.uint16(high * 0.2)
    image[xx**2 + (yy - 0.45) ** 2 < 0.01] += np.uint16(high * 0.3)
    return image


def _pixel_module(ds: Dataset, pixels: np.ndarray, bits_stored: int) -> None:
    """Image pixel module (PS3.3 C.7.6.3); values are unsigned and stored little endian."""
    ds.SamplesPerPixel = 3 if pixels.ndim == 3 else 1
    ds.PhotometricInterpretation = "RGB" if pixels.ndim == 3 else "MONOCHROME2"
    if pixels.ndim == 3:
        ds.PlanarConfiguration = 0
    ds.Rows, ds.Columns = pixels.shape[0], pixels.shape[1]
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits_stored, bits_stored - 1, 0
    ds.PixelData = pixels.astype(pixels.dtype.newbyteorder("<"), copy=False).tobytes()
    ds["PixelData"].VR = "OB" if ds.BitsAllocated == 8 else "OW"


def _instance(plan: StudyPlan, series: int, number: int) -> FileDataset:
    kind = _KINDS[plan.modality]
    when = datetime.strptime(plan.study_date + plan.study_time, "%Y%m%d%H%M%S")
    when += timedelta(seconds=120 + 30 * series + number, microseconds=1000 * number)
    ds = _header(plan, series, number, when)
    if plan.modality in ("CT", "MR"):
        _cross_sectional(ds, plan, series, number)
    elif plan.modality in ("CR", "DX"):
        _projection(ds, plan, series)
    else:
        ds.PatientOrientation = ""
        ds.LossyImageCompression = "00"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "ABDOMINAL", "0001"]
    _pixel_module(ds, _pixels(plan, series, number), kind.bits_stored)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    # Set explicitly: pydicom would stamp its own, which changes with its version.
    meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    return FileDataset("", ds, file_meta=meta, preamble=b"\0" * 128)


def study_instances(plan: StudyPlan) -> Iterator[FileDataset]:
    """The study's instances in order, spread over the modality's series (all in series 1 if few)."""
    series_count = min(_KINDS[plan.modality].series, plan.n_instances)
    per_series, extra = divmod(plan.n_instances, series_count)
    for series in range(1, series_count + 1):
        for number in range(1, per_series + (1 if series <= extra else 0) + 1):
            yield _instance(plan, series, number)


def generate_study(seed: int, modality: Modality, n_instances: int, source: str) -> Iterator[FileDataset]:
    """Generate one study's instances as pydicom datasets, ready for `dataset_to_bytes`."""
    return study_instances(plan_study(seed, modality, n_instances, source))


@dataclass(frozen=True)
class DemoStudy:
    folder: Path
    modality: Modality
    source: str
    study_instance_uid: str
    files: tuple[Path, ...]
    phi: Mapping[str, str] = field(hash=False)


@dataclass(frozen=True)
class DemoManifest:
    """What write_demo_data wrote: the files per study and the PHI planted in each."""

    root: Path
    seed: int
    studies: tuple[DemoStudy, ...]
    total_bytes: int

    @property
    def files(self) -> tuple[Path, ...]:
        return tuple(f for s in self.studies for f in s.files)

    def phi_values(self, min_length: int = 1) -> frozenset[str]:
        """Every planted value; `min_length` drops short ones ("F", "058Y") that match by chance."""
        return frozenset(v for s in self.studies for v in s.phi.values() if len(v) >= min_length)

    def to_json(self) -> str:
        """The manifest as JSON, e.g. for `imx demo-data` to save beside (not inside) the data."""
        studies = [{**vars(s), "phi": dict(s.phi)} for s in self.studies]
        body = {"root": self.root, "seed": self.seed, "total_bytes": self.total_bytes, "studies": studies}
        return json.dumps(body, indent=2, default=str)


# The demo mix: cross-sectional studies dominate the bytes, projection studies the study count.
_DEMO_CYCLE: tuple[Modality, ...] = ("CT", "MR", "CR", "CT", "MR", "DX")
DEMO_SOURCES = ("RXA01", "RYB02", "RZC03")


def write_demo_data(
    out: Path,
    studies: int,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
    stop_before: Callable[[], bool] | None = None,
) -> DemoManifest:
    """Write `studies` studies (a CT/MR/CR/DX mix) under `out`, one folder per study.

    Folder and file names carry no PHI. `progress`, when given, is called after each study
    with the number of studies written so far. `stop_before`, when given, is asked before each study
    and ends the writing early when true (the disk is nearly full): the manifest lists what was written.
    """
    picker = random.Random(f"imx-demo/{seed}")
    written: list[DemoStudy] = []
    total = 0
    for index in range(studies):
        if stop_before is not None and stop_before():
            break
        modality = _DEMO_CYCLE[index % len(_DEMO_CYCLE)]
        low, high = _KINDS[modality].instances
        plan = plan_study(
            seed * 1_000_003 + index, modality, picker.randint(low, high), DEMO_SOURCES[index % len(DEMO_SOURCES)]
        )
        folder = out / f"study-{index + 1:04d}-{modality.lower()}"
        folder.mkdir(parents=True, exist_ok=True)
        files: list[Path] = []
        for ds in study_instances(plan):
            data = dataset_to_bytes(ds)
            path = folder / f"s{ds.SeriesNumber:02d}-i{ds.InstanceNumber:04d}.dcm"
            path.write_bytes(data)
            files.append(path)
            total += len(data)
        written.append(
            DemoStudy(
                folder, modality, plan.source, plan.study_instance_uid, tuple(files), MappingProxyType(plan.phi())
            )
        )
        if progress is not None:
            progress(index + 1)
    return DemoManifest(out, seed, tuple(written), total)
