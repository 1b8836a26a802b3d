"""Building MR Image Storage datasets with pydicom from the committed real slices (no hand-written bytes)."""

from __future__ import annotations

import copy
import io
import shutil
import struct
import subprocess
import tempfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sr.codedict import codes
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    MRImageStorage,
    MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
    RLELossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from app.dicom.part10 import read_file_meta
from tests.lgg_data import TUMOR_SERIES, read_slice

FLAIR = 1  # channel of the kaggle_3m slices: pre-contrast, FLAIR, post-contrast
SLICE_GAP_MM = 5.0
PIXEL_SPACING_MM = (0.9375, 0.9375)
AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


PATIENT_ID = "TEST-0001"  # synthetic, like every patient attribute here


@dataclass(frozen=True)
class Study:
    """UIDs shared by the series of one synthetic study."""

    study_uid: str = field(default_factory=generate_uid)
    frame_of_reference_uid: str = field(default_factory=generate_uid)


def tumor_channels(channel: int = FLAIR) -> list[np.ndarray]:
    """One channel (uint8 256x256) of each committed tumor slice, in slice order."""
    return [read_slice(path)[:, :, channel] for path in TUMOR_SERIES]


def mr_dataset(
    stored: np.ndarray,
    study: Study,
    series_uid: str,
    instance_number: int = 1,
    position_mm: float = 0.0,
    series_number: int = 1,
    series_description: str = "AX FLAIR",
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    rescale: tuple[float, float] | None = None,
) -> Dataset:
    """An MR Image Storage dataset holding `stored` (uint8, uint16 or int16 HxW) as its stored pixel values."""
    bits_allocated = stored.dtype.itemsize * 8
    dataset = Dataset()
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset.SOPClassUID = MRImageStorage
    dataset.SOPInstanceUID = generate_uid()
    dataset.file_meta.MediaStorageSOPClassUID = dataset.SOPClassUID
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    # Patient and study: synthetic values only.
    dataset.PatientName = "Test^Phantom"
    dataset.PatientID = PATIENT_ID
    dataset.PatientBirthDate = ""
    dataset.PatientSex = "O"
    dataset.StudyInstanceUID = study.study_uid
    dataset.StudyDate = "20240101"
    dataset.StudyTime = "120000"
    dataset.StudyID = "1"
    dataset.AccessionNumber = ""
    dataset.ReferringPhysicianName = ""
    # Series, equipment, frame of reference.
    dataset.Modality = "MR"
    dataset.SeriesInstanceUID = series_uid
    dataset.SeriesNumber = series_number
    dataset.SeriesDescription = series_description
    dataset.PatientPosition = "HFS"
    dataset.Manufacturer = "synthetic"
    dataset.FrameOfReferenceUID = study.frame_of_reference_uid
    dataset.PositionReferenceIndicator = ""
    # Image, image plane, MR image.
    dataset.InstanceNumber = instance_number
    dataset.ContentDate = "20240101"
    dataset.ContentTime = "120000"
    dataset.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
    dataset.PixelSpacing = list(PIXEL_SPACING_MM)
    dataset.ImageOrientationPatient = list(AXIAL)
    dataset.ImagePositionPatient = [-120.0, -120.0, position_mm]
    dataset.SliceThickness = SLICE_GAP_MM
    dataset.SpacingBetweenSlices = SLICE_GAP_MM
    dataset.ScanningSequence = "SE"
    dataset.SequenceVariant = "NONE"
    dataset.ScanOptions = ""
    dataset.MRAcquisitionType = "2D"
    dataset.RepetitionTime = 9000.0
    dataset.EchoTime = 100.0
    dataset.EchoTrainLength = 1
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = photometric
    dataset.Rows, dataset.Columns = stored.shape
    dataset.BitsAllocated = bits_allocated
    dataset.BitsStored = bits_stored or bits_allocated
    dataset.HighBit = dataset.BitsStored - 1
    dataset.PixelRepresentation = 1 if stored.dtype.kind == "i" else 0
    if rescale is not None:
        dataset.RescaleSlope, dataset.RescaleIntercept = rescale
    dataset.PixelData = np.ascontiguousarray(stored).tobytes()
    return dataset


def mr_series(
    images: Sequence[np.ndarray],
    study: Study | None = None,
    series_number: int = 1,
    series_description: str = "AX FLAIR",
) -> list[Dataset]:
    """One single-frame MR instance per image, `SLICE_GAP_MM` apart along the slice normal."""
    study = study or Study()
    series_uid = generate_uid()
    return [
        mr_dataset(
            image,
            study,
            series_uid,
            instance_number=index + 1,
            position_mm=index * SLICE_GAP_MM,
            series_number=series_number,
            series_description=series_description,
        )
        for index, image in enumerate(images)
    ]


def secondary_capture(dataset: Dataset, modality: str) -> Dataset:
    """The MR instance as a Secondary Capture: no patient coordinate system, as a screen capture has."""
    dataset.SOPClassUID = dataset.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    dataset.Modality = modality
    dataset.ConversionType = "WSD"
    for keyword in (
        "ImagePositionPatient",
        "ImageOrientationPatient",
        "SliceThickness",
        "SpacingBetweenSlices",
        "FrameOfReferenceUID",
        "PositionReferenceIndicator",
    ):
        delattr(dataset, keyword)
    return dataset


def secondary_capture_series(images: Sequence[np.ndarray], study: Study | None = None) -> list[Dataset]:
    """Greyscale Secondary Captures of MR slices (Modality MR), as a capture export writes them: no Frame of
    Reference, no plane or Pixel Spacing (a Patient Orientation instead), in order by Instance Number."""
    series = [secondary_capture(dataset, "MR") for dataset in mr_series(images, study)]
    for dataset in series:
        del dataset.PixelSpacing
        dataset.PatientOrientation = ["L", "P"]
    return series


def multiframe_secondary_capture(images: Sequence[np.ndarray], study: Study | None = None) -> Dataset:
    """The uint8 images as one Multi-frame Grayscale Byte Secondary Capture (Modality MR): frames without a position,
    in slice order, as a viewer's export of a stack writes them."""
    (dataset,) = secondary_capture_series(images[:1], study)
    dataset.SOPClassUID = dataset.file_meta.MediaStorageSOPClassUID = (
        MultiFrameGrayscaleByteSecondaryCaptureImageStorage
    )
    dataset.NumberOfFrames = len(images)
    dataset.FrameIncrementPointer = 0x00182002  # Frame Label Vector
    dataset.FrameLabelVector = [f"slice {index + 1}" for index in range(len(images))]
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit = 8, 8, 7
    dataset.PixelData = np.stack([np.asarray(image, np.uint8) for image in images]).tobytes()
    return dataset


def legacy_multiframe(datasets: Sequence[Dataset]) -> Dataset:
    """The single-frame instances as one Legacy Converted Enhanced MR instance (series 2), made by highdicom."""
    return hd.legacy.LegacyConvertedEnhancedMRImage(
        datasets,
        series_instance_uid=generate_uid(),
        series_number=2,
        sop_instance_uid=generate_uid(),
        instance_number=1,
    )


def key_object_selection(
    evidence: Sequence[Dataset], named: Sequence[Dataset], title: hd.sr.CodedConcept | None = None
) -> Dataset:
    """A Key Object Selection as a PACS sends it under IHE IOCM (highdicom; by default "Rejected for Quality
    Reasons"), read back from its bytes: `named` in its content, every instance of `evidence` in its evidence, as a
    note made from a whole series lists them."""
    note = hd.ko.KeyObjectSelectionDocument(
        evidence=evidence,
        content=hd.ko.KeyObjectSelection(
            document_title=title or codes.DCM.RejectedForQualityReasons, referenced_objects=named
        ),
        series_instance_uid=generate_uid(),
        series_number=90,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="PACS",
    )
    buffer = io.BytesIO()
    note.save_as(buffer, enforce_file_format=True)
    return pydicom.dcmread(io.BytesIO(buffer.getvalue()))


def deflated_and_padded(dataset: Dataset) -> bytes:
    """`dataset` as a Part 10 file in Deflated Explicit VR Little Endian whose deflate stream has an odd length and is
    padded with a zero byte to an even one (PS3.5 A.5), as DCMTK and pynetdicom send it. Its Image Comments grow
    until the stream's length is odd."""
    dataset = copy.deepcopy(dataset)
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    for length in range(64):
        dataset.ImageComments = "x" * length
        plain = to_bytes(dataset)
        meta_end, _ = read_file_meta(plain)
        compressor = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
        stream = compressor.compress(plain[meta_end:]) + compressor.flush()
        if len(stream) % 2:
            meta = copy.deepcopy(dataset.file_meta)
            meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
            head = io.BytesIO()
            pydicom.filewriter.write_file_meta_info(head, meta)
            return bytes(128) + b"DICM" + head.getvalue() + stream + b"\0"
    raise AssertionError("no odd-length stream in 64 tries")


def lossy_copies(series: list[Dataset]) -> list[Dataset]:
    """Each instance as a PACS forwards it after lossy compression: a new SOP Instance UID, naming its original in
    its Source Image Sequence (PS3.3 C.7.6.1.1.5)."""
    copies = []
    for original in series:
        lossy = copy.deepcopy(original)
        source = Dataset()
        source.ReferencedSOPClassUID, source.ReferencedSOPInstanceUID = original.SOPClassUID, original.SOPInstanceUID
        lossy.SourceImageSequence = [source]
        lossy.SOPInstanceUID = lossy.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        lossy.LossyImageCompression = "01"
        copies.append(lossy)
    return copies


def referenced(dataset: Dataset) -> set[str]:
    """Every Referenced SOP Instance UID anywhere in `dataset` (its sequences walked): what a SEG, SR or note names."""
    return {str(element.value) for element in dataset.iterall() if element.keyword == "ReferencedSOPInstanceUID"}


def with_trailing_sequence(data: bytes, items: int, tail: bytes = b"", tag: int = 0xFFFAFFFA) -> bytes:
    """A little-endian explicit-VR Part 10 file `data` followed by a sequence `tag` (default the Digital Signatures
    Sequence, FFFA,FFFA) of undefined length holding `items` empty items, then `tail` and no delimiter: a sequence cut
    short after the pixel data (or, with many items, one that costs pydicom a Dataset per 8 bytes if it reads it)."""
    header = struct.pack("<HH2sHI", tag >> 16, tag & 0xFFFF, b"SQ", 0, 0xFFFFFFFF)
    return data + header + struct.pack("<HHI", 0xFFFE, 0xE000, 0) * items + tail


def to_bytes(dataset: Dataset) -> bytes:
    """The dataset as a DICOM Part 10 file."""
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def write_files(datasets: Sequence[Dataset], directory: Path) -> list[Path]:
    """Each dataset as a Part 10 file in `directory` (made if missing), for tools that send files, e.g. storescu."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for dataset in datasets:
        path = directory / f"{generate_uid()[-12:]}.dcm"
        path.write_bytes(to_bytes(dataset))
        paths.append(path)
    return paths


def with_broken_rle(dataset: Dataset) -> Dataset:
    """`dataset` as RLE Lossless whose one segment holds 3 bytes for a whole frame: its header passes every check,
    and pydicom's decoder fails on it (attack review 26)."""
    segment_table = bytearray(64)
    segment_table[0], segment_table[4] = 1, 64  # one segment, at byte 64
    dataset.file_meta.TransferSyntaxUID = RLELossless
    dataset.PixelData = encapsulate([bytes(segment_table) + b"\x7f\x01\x02\x03"])
    dataset["PixelData"].VR = "OB"
    return dataset


def htj2k_lossless(dataset: Dataset) -> Dataset:
    """`dataset` (one grey frame of 8 bits or more) in High-Throughput JPEG 2000 Lossless, encoded by OpenJPH's
    `ojph_compress` (pydicom has no HTJ2K encoder; skips the test when the tool is missing)."""
    encoder = shutil.which("ojph_compress")
    if encoder is None:
        pytest.skip(
            "ojph_compress not found: install the Debian package openjph-tools (.ci/install-system-packages.sh)"
        )
    pixels = dataset.pixel_array
    maxval = (1 << int(dataset.BitsStored)) - 1
    samples = pixels.astype(np.uint8 if maxval <= 255 else ">u2").tobytes()
    with tempfile.TemporaryDirectory() as directory:
        image, codestream = Path(directory) / "slice.pgm", Path(directory) / "slice.j2c"
        image.write_bytes(f"P5 {pixels.shape[1]} {pixels.shape[0]} {maxval}\n".encode() + samples)
        subprocess.run(
            [encoder, "-i", str(image), "-o", str(codestream), "-reversible", "true"], check=True, capture_output=True
        )
        dataset.PixelData = encapsulate([codestream.read_bytes()])
    dataset["PixelData"].VR = "OB"
    dataset.file_meta.TransferSyntaxUID = HTJ2KLossless
    return dataset
