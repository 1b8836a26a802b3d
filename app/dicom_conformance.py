"""Making source headers and derived objects meet what highdicom and the DICOM standard require.

De-identified or hand-made instances often lack Type 2 attributes (Patient's Birth Date, Study ID, Accession
Number, ...): the standard lets them be empty but not absent, and highdicom reads them without a default when it
copies the patient and study modules into a SEG or an SR, so it fails with an AttributeError. `with_type2_attributes`
hands highdicom a copy with the missing ones present and empty, never touching the caller's dataset.

A SEG of a source without a patient coordinate system (a Secondary Capture without Image Orientation) must carry
Patient Orientation (Type 2C in the General Image module), which highdicom leaves out: `complete_segmentation` adds
it, empty or copied from the source.

A SEG or an SR refers to its sources by their UIDs (Type 1: present and not empty); `missing_reference_uids` names
the ones a source lacks, so the caller can refuse it with a reason instead of failing inside highdicom.

A SEG or an SR copies the patient's and study's names and descriptions, so it needs a Specific Character Set that
holds them: `derived_character_set` keeps the source's, unless highdicom would refuse it (ISO 2022 code extensions
in the forms Japanese and Korean sites send), and then writes UTF-8.
"""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
from pydicom.dataset import Dataset

from app.dicom_frame import DicomFrame, frame_value

# Patient and General Study module attributes of Type 2 that highdicom copies from the first source.
TYPE2_PATIENT_STUDY_ATTRIBUTES = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)


# What a SEG or an SR needs of every source to refer to it (Type 1 in the referencing macros and modules).
REFERENCE_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")


# One character set without ISO 2022 code extensions, which highdicom writes as it is (ISO_IR 100, ISO_IR 192, GBK ...).
SINGLE_CHARACTER_SETS = frozenset(
    value.value for value in hd.enum.SpecificCharacterSetValues if not value.value.startswith("ISO 2022")
)
UTF8 = "ISO_IR 192"


def derived_character_set(source: Dataset) -> str | None:
    """The Specific Character Set of a SEG or SR made from `source`: the source's own when it is absent (the default
    repertoire) or one character set without code extensions, else UTF-8, which holds every character the source's
    values decode to.

    Why: highdicom refuses ISO 2022 code extensions in the forms the standard and scanners use (`\\ISO 2022 IR 87`
    with its empty first value, Korean `ISO 2022 IR 149`, a lone `ISO 2022 IR 100`), so a Japanese or Korean series
    got no SEG. Converting is lossless: pydicom decodes the copied values to text and encodes them again on writing.
    """
    value = source.get("SpecificCharacterSet")
    if value is None or value == "":
        return None
    if isinstance(value, str) and value in SINGLE_CHARACTER_SETS:
        return value
    return UTF8


# The plane of a frame in a patient coordinate system: (functional group sequence, attribute) as `frame_value` reads
# them, per frame or shared in an enhanced object, else at the top level.
PLANE_ATTRIBUTES = (
    ("PlanePositionSequence", "ImagePositionPatient"),
    ("PlaneOrientationSequence", "ImageOrientationPatient"),
    ("PixelMeasuresSequence", "PixelSpacing"),
)


def missing_plane_attributes(frames: Sequence[DicomFrame]) -> list[str]:
    """The plane attributes that any of `frames` with a Frame of Reference UID lacks altogether (Type 1 in MR),
    in `PLANE_ATTRIBUTES` order: highdicom fails on them with an AttributeError that names nothing. A value that
    is present but impossible (a spacing of 0) is the volume's concern, not this check's."""
    placed = [frame for frame in frames if frame.frame_of_reference_uid]
    return [
        keyword
        for sequence, keyword in PLANE_ATTRIBUTES
        if any(frame_value(frame.header, frame.frame_number - 1, sequence, keyword) is None for frame in placed)
    ]


def missing_reference_uids(sources: Sequence[Dataset]) -> list[str]:
    """The `REFERENCE_UIDS` that any of `sources` lacks or leaves empty, in that order."""
    return [keyword for keyword in REFERENCE_UIDS if any(not str(source.get(keyword) or "") for source in sources)]


def with_type2_attributes(dataset: Dataset) -> Dataset:
    """`dataset` itself when it has every `TYPE2_PATIENT_STUDY_ATTRIBUTES`, else a shallow copy with the missing
    ones present and empty (the elements are shared, the dataset is not modified)."""
    missing = [keyword for keyword in TYPE2_PATIENT_STUDY_ATTRIBUTES if keyword not in dataset]
    if not missing:
        return dataset
    completed = Dataset()
    if hasattr(dataset, "file_meta"):
        completed.file_meta = dataset.file_meta
    for element in dataset:
        completed.add(element)
    for keyword in missing:
        setattr(completed, keyword, None)  # an empty value: what Type 2 means by "unknown"
    return completed


def complete_segmentation(segmentation: Dataset, source_images: Sequence[Dataset]) -> Dataset:
    """Add Patient Orientation to a SEG whose sources have no Image Orientation (Patient) (Type 2C), in place."""
    if "PatientOrientation" in segmentation or "FrameOfReferenceUID" in segmentation:
        return segmentation
    orientations = {tuple(source.get("PatientOrientation") or ()) for source in source_images}
    segmentation.PatientOrientation = list(orientations.pop()) if len(orientations) == 1 else None
    return segmentation
