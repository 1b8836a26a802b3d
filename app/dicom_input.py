"""Decoding DICOM Part 10 uploads into frames: modality values plus what a DICOM SEG needs to refer back.

`read_dicom` turns one file into `DicomFrame`s (one per frame): the modality values (Rescale Slope / Intercept or the
Modality LUT applied first, BitsStored and signed pixels honoured by pydicom, MONOCHROME1 inverted so that a higher
value always means more signal), the frame's geometry and the instance's header without its pixel data. Grouping
frames into model inputs is `app.dicom_series`'s job.

A file is recognised by its 128-byte preamble followed by ``DICM`` (`is_dicom`), never by its name. Failures are
`app.errors.ServiceError`s whose messages name the rule and the value found; they never quote patient attributes.
Nothing here logs.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut, get_decoder
from pydicom.uid import UID

from app.errors import (
    DicomWithoutPixelDataError,
    ImageTooLargeError,
    InvalidDicomImageError,
    ServiceError,
    UndecodableDicomError,
    UnsupportedDicomError,
)
from app.settings import Settings

DICOM_PREAMBLE_LENGTH = 128
DICOM_MAGIC = b"DICM"

# Image storage classes whose pixels are MR slices (or a screenshot of one). Anything else, a SEG, an SR, a CT, is
# refused: the models learned brain MR and their output would mean nothing for other content.
SUPPORTED_SOP_CLASSES: dict[str, str] = {
    "1.2.840.10008.5.1.4.1.1.4": "MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.4.1": "Enhanced MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.4.4": "Legacy Converted Enhanced MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.7.2": "Multi-frame Grayscale Byte Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.7.3": "Multi-frame Grayscale Word Secondary Capture Image Storage",
}
MONOCHROME_INTERPRETATIONS = ("MONOCHROME1", "MONOCHROME2")
PIXEL_DATA_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
UNDEFINED_LENGTH = 0xFFFFFFFF
_RASTER_SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff")  # TIFF may share a file with DICOM: not listed


@dataclass(frozen=True, eq=False)
class DicomFrame:
    """One frame of one instance: its modality values and what a DICOM SEG frame needs to point back at it.

    Attributes
    ----------
    values
        float32 HxW modality values (after the modality LUT; MONOCHROME1 inverted so higher means brighter).
    header
        The instance's dataset without its pixel data, shared by all frames of the instance.
    frame_number
        1-based frame number within the instance (1 for single-frame instances).
    number_of_frames
        Frames in the instance.
    image_position, image_orientation, pixel_spacing, slice_thickness, spacing_between_slices
        The frame's geometry in mm (from the per-frame or shared functional groups for enhanced multi-frame
        objects, else from the top level); None where the object does not say.
    """

    values: np.ndarray
    header: Dataset
    frame_number: int
    number_of_frames: int
    image_position: tuple[float, float, float] | None
    image_orientation: tuple[float, float, float, float, float, float] | None
    pixel_spacing: tuple[float, float] | None
    slice_thickness: float | None
    spacing_between_slices: float | None

    @property
    def sop_instance_uid(self) -> str:
        return str(self.header.SOPInstanceUID)

    @property
    def series_instance_uid(self) -> str:
        return str(self.header.get("SeriesInstanceUID", ""))

    @property
    def study_instance_uid(self) -> str:
        return str(self.header.get("StudyInstanceUID", ""))

    @property
    def frame_of_reference_uid(self) -> str:
        return str(self.header.get("FrameOfReferenceUID", ""))

    @property
    def is_multiframe(self) -> bool:
        return "NumberOfFrames" in self.header


def is_dicom(data: bytes) -> bool:
    """True if `data` is a DICOM Part 10 file: a 128-byte preamble, ``DICM``, then a file meta group.

    ``DICM`` alone is four bytes any file can hold at 128 (a PNG's text chunk): the file meta group must follow (a
    group 0002 tag, then an explicit VR), and a file that starts with a PNG or JPEG signature is that image.
    """
    start = DICOM_PREAMBLE_LENGTH + len(DICOM_MAGIC)
    if data[DICOM_PREAMBLE_LENGTH:start] != DICOM_MAGIC or data.startswith(_RASTER_SIGNATURES):
        return False
    if data[start : start + 2] != b"\x02\x00":  # group 0002, little endian, as Part 10 requires
        return False
    vr = data[start + 4 : start + 6]
    return len(vr) < 2 or (vr.isalpha() and vr.isupper())  # a truncated meta group is still DICOM, and a 400


DEFAULT_MAX_DICOM_PIXELS: int = Settings.model_fields["max_dicom_pixels"].default


def read_dicom(data: bytes, max_pixels: int = DEFAULT_MAX_DICOM_PIXELS) -> list[DicomFrame]:
    """Read one DICOM Part 10 file into its frames.

    Checks run cheapest first: the Part 10 marker, the SOP class, the presence of pixel data, the photometric
    interpretation, rows x columns x frames against `max_pixels`, the transfer syntax's decoder; only then are the
    pixels decoded.

    Parameters
    ----------
    data
        The file's bytes.
    max_pixels
        Largest accepted rows x columns x frames, checked from the header before pixel data is decoded.

    Returns
    -------
    list of DicomFrame
        One per frame, in frame order.

    Raises
    ------
    UndecodableDicomError
        If the bytes are not a readable DICOM Part 10 file or the pixel data does not decode.
    UnsupportedDicomError
        If the SOP class is not an MR (or secondary capture) image, or no decoder exists for the transfer syntax.
    DicomWithoutPixelDataError
        If an image SOP class comes without pixel data.
    InvalidDicomImageError
        If the pixels are not monochrome with one sample per pixel.
    app.errors.ImageTooLargeError
        If rows x columns x frames is over `max_pixels`.
    """
    if not is_dicom(data):
        raise UndecodableDicomError(
            f"a DICOM file must hold {DICOM_MAGIC.decode()} at byte {DICOM_PREAMBLE_LENGTH} (Part 10 format); "
            f"found {data[DICOM_PREAMBLE_LENGTH : DICOM_PREAMBLE_LENGTH + 4]!r}"
        )
    try:
        dataset = pydicom.dcmread(io.BytesIO(data))
        _check_complete(dataset)
        _check_sop_class(dataset)
        _check_pixel_description(dataset)
        rows, columns, frames = _dimensions(dataset)
    except ServiceError:
        raise
    except Exception as error:  # pydicom parses lazily: a garbled value surfaces as any type on first access
        raise UndecodableDicomError(f"DICOM file cannot be read (truncated or corrupt): {error}") from error
    if rows * columns * frames > max_pixels:
        raise ImageTooLargeError(
            f"DICOM image is {rows}x{columns} pixels x {frames} frames = {rows * columns * frames} pixels; "
            f"the limit is {max_pixels} pixels"
        )
    values = _decode_values(dataset, frames)
    for keyword in PIXEL_DATA_KEYWORDS:
        if keyword in dataset:
            delattr(dataset, keyword)  # the header is kept per frame: no need to hold the encoded pixels twice
    return [_frame(dataset, values[index], index, frames) for index in range(frames)]


def _check_complete(dataset: Dataset) -> None:
    """pydicom reads a value cut short by the end of the file without complaint; only the last element can be."""
    tags = list(dataset.keys())
    if not tags:
        return
    element = dataset.get_item(tags[-1])  # the raw element: its value is not decoded here
    declared = getattr(element, "length", None)
    value = element.value
    if declared is not None and declared != UNDEFINED_LENGTH and isinstance(value, bytes) and len(value) < declared:
        raise UndecodableDicomError(
            f"DICOM file is truncated: element {element.tag} declares {declared} bytes but the file holds {len(value)}"
        )


def _check_sop_class(dataset: Dataset) -> None:
    sop_class = dataset.get("SOPClassUID")
    if sop_class is None:
        raise UndecodableDicomError(
            "DICOM dataset has no SOP Class UID (0008,0016): the file is truncated or not a DICOM object"
        )
    if str(sop_class) not in SUPPORTED_SOP_CLASSES:
        name = UID(str(sop_class)).name
        raise UnsupportedDicomError(
            f"DICOM SOP class must be one of {', '.join(SUPPORTED_SOP_CLASSES.values())}; got {name} ({sop_class})"
        )
    if not any(keyword in dataset for keyword in PIXEL_DATA_KEYWORDS):
        raise DicomWithoutPixelDataError(
            f"DICOM {SUPPORTED_SOP_CLASSES[str(sop_class)]} must carry Pixel Data (7FE0,0010); this one has none "
            "(or the file is truncated before it)"
        )


def _check_pixel_description(dataset: Dataset) -> None:
    for keyword in ("Rows", "Columns", "BitsAllocated"):
        if keyword not in dataset:
            raise UndecodableDicomError(f"DICOM image must state {keyword}; it is missing (truncated or corrupt file)")
    samples = int(dataset.get("SamplesPerPixel", 1))
    interpretation = str(dataset.get("PhotometricInterpretation", ""))
    if samples != 1 or interpretation not in MONOCHROME_INTERPRETATIONS:
        raise InvalidDicomImageError(
            "DICOM image must be greyscale (SamplesPerPixel 1, PhotometricInterpretation MONOCHROME1 or MONOCHROME2); "
            f"got SamplesPerPixel {samples}, PhotometricInterpretation {interpretation or 'missing'}"
        )


def _dimensions(dataset: Dataset) -> tuple[int, int, int]:
    rows, columns = int(dataset.Rows), int(dataset.Columns)
    try:
        frames = int(dataset.get("NumberOfFrames") or 1)
    except (TypeError, ValueError) as error:
        raise UndecodableDicomError(
            f"DICOM Number of Frames must be a positive integer; got {dataset.NumberOfFrames!r}"
        ) from error
    if rows < 1 or columns < 1 or frames < 1:
        raise InvalidDicomImageError(
            f"DICOM image must have at least one row, column and frame; got {rows}x{columns} x {frames} frames"
        )
    return rows, columns, frames


def _decode_values(dataset: Dataset, frames: int) -> np.ndarray:
    """Decoded pixels as float32 (frames, rows, columns) modality values, brighter = higher."""
    file_meta = getattr(dataset, "file_meta", None)
    transfer_syntax = file_meta.get("TransferSyntaxUID") if file_meta is not None else None
    if transfer_syntax is not None and transfer_syntax.is_compressed and not _decoder_available(transfer_syntax):
        raise UnsupportedDicomError(
            f"DICOM transfer syntax {transfer_syntax.name} ({transfer_syntax}) cannot be decoded by this service"
        )
    try:
        stored = dataset.pixel_array  # pydicom applies BitsStored and the sign of PixelRepresentation
    except Exception as error:  # pydicom and its plugins raise many types for a broken pixel stream
        raise UndecodableDicomError(f"DICOM pixel data cannot be decoded: {error}") from error
    stored = stored.reshape(frames, int(dataset.Rows), int(dataset.Columns))
    values = np.empty(stored.shape, dtype=np.float32)
    for index in range(frames):
        values[index] = _modality_values(dataset, stored[index], index)
    if str(dataset.PhotometricInterpretation) == "MONOCHROME1":
        # MONOCHROME1 shows low values bright; negating keeps "higher = brighter", and the stretch that follows
        # removes the sign, so the result matches the image a viewer displays.
        np.negative(values, out=values)
    return values


def _decoder_available(transfer_syntax: UID) -> bool:
    try:
        return bool(get_decoder(transfer_syntax).is_available)
    except NotImplementedError:  # pydicom knows no decoder at all for this transfer syntax
        return False


def _modality_values(dataset: Dataset, stored: np.ndarray, index: int) -> np.ndarray:
    """Apply the modality LUT first, as the standard orders: a Modality LUT Sequence, else slope and intercept."""
    if "ModalityLUTSequence" in dataset:
        _check_modality_lut(dataset)
        try:
            return np.asarray(apply_modality_lut(stored, dataset), dtype=np.float64)
        except Exception as error:  # a descriptor pydicom cannot use: the element is wrong, whatever the type
            raise InvalidDicomImageError(
                f"ModalityLUTSequence (0028,3000) cannot be applied ({type(error).__name__})"
            ) from error
    slope = _number(_frame_value(dataset, index, "PixelValueTransformationSequence", "RescaleSlope"), "RescaleSlope")
    intercept = _number(
        _frame_value(dataset, index, "PixelValueTransformationSequence", "RescaleIntercept"), "RescaleIntercept"
    )
    values = stored.astype(np.float64)
    if slope is not None and slope != 1.0:
        values *= slope
    if intercept is not None and intercept != 0.0:
        values += intercept
    return values


def _check_modality_lut(dataset: Dataset) -> None:
    items = dataset.ModalityLUTSequence
    if len(items) != 1:
        raise InvalidDicomImageError(f"ModalityLUTSequence (0028,3000) must hold one item; it holds {len(items)}")
    for keyword in ("LUTDescriptor", "LUTData"):
        if keyword not in items[0]:
            raise InvalidDicomImageError(f"the ModalityLUTSequence (0028,3000) item has no {keyword}")


def _number(value: object, keyword: str) -> float | None:
    """`value` as a finite float, or a 400 naming the element (never its value: it is the file's content)."""
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InvalidDicomImageError(f"{keyword} must be a decimal number") from None
    if not math.isfinite(number):
        raise InvalidDicomImageError(f"{keyword} must be a finite number")
    return number


def _frame_value(dataset: Dataset, index: int, sequence: str, keyword: str) -> object | None:
    """An attribute of frame `index`: per-frame functional group, then shared group, then the top level."""
    candidates = []
    per_frame = dataset.get("PerFrameFunctionalGroupsSequence")
    if per_frame is not None and index < len(per_frame):
        candidates.append(per_frame[index])
    shared = dataset.get("SharedFunctionalGroupsSequence")
    if shared:
        candidates.append(shared[0])
    for group in candidates:
        items = group.get(sequence)
        if items and keyword in items[0]:
            return items[0][keyword].value
    return dataset.get(keyword)


def _floats(value: object, count: int, keyword: str) -> tuple[float, ...] | None:
    """`count` numbers, or None when absent or unreadable (geometry is optional); a 400 for infinite ones, which
    no position can be and which would break the arithmetic on positions."""
    if value is None:
        return None
    try:
        items = value if isinstance(value, Sequence) and not isinstance(value, str | bytes) else [value]
        numbers = tuple(float(item) for item in items)
    except (TypeError, ValueError):
        return None
    if not all(math.isfinite(number) for number in numbers):
        raise InvalidDicomImageError(f"{keyword} must hold finite numbers")
    return numbers if len(numbers) == count else None


def _frame(dataset: Dataset, values: np.ndarray, index: int, frames: int) -> DicomFrame:
    def floats(sequence: str, keyword: str, count: int) -> tuple[float, ...] | None:
        return _floats(_frame_value(dataset, index, sequence, keyword), count, keyword)

    thickness = floats("PixelMeasuresSequence", "SliceThickness", 1)
    between = floats("PixelMeasuresSequence", "SpacingBetweenSlices", 1)
    return DicomFrame(
        values=values,
        header=dataset,
        frame_number=index + 1,
        number_of_frames=frames,
        image_position=floats("PlanePositionSequence", "ImagePositionPatient", 3),
        image_orientation=floats("PlaneOrientationSequence", "ImageOrientationPatient", 6),
        pixel_spacing=floats("PixelMeasuresSequence", "PixelSpacing", 2),
        slice_thickness=thickness[0] if thickness else None,
        spacing_between_slices=between[0] if between else None,
    )
