"""Reading DICOM Part 10 uploads into model-ready uint8 slices, keeping what a DICOM SEG needs to refer back.

Two steps, so that intensities can be normalised over a whole series before slices are paired into channels:

1. `read_dicom` turns one file into `DicomFrame`s (one per frame): the modality values (Rescale Slope / Intercept or
   the Modality LUT applied first, BitsStored and signed pixels honoured by pydicom, MONOCHROME1 inverted so that a
   higher value always means more signal), the frame's geometry and the instance's header without its pixel data.
2. `prepare_inputs` normalises the frames of each series to uint8 (`normalise_volume`) and groups frames that lie at
   the same position into one model input (`SliceInput`): alone it is FLAIR, three together are pre-contrast, FLAIR,
   post-contrast in the order they were given.

A file is recognised by its 128-byte preamble followed by ``DICM`` (`is_dicom`), never by its name. Failures are
`app.errors.ServiceError`s whose messages name the rule and the value found; they never quote patient attributes.
Nothing here logs.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut, get_decoder
from pydicom.uid import UID, JPEGExtended12Bit

from app.errors import ErrorKind, ImageTooLargeError, ServiceError
from app.imaging import DEFAULT_MAX_IMAGE_PIXELS

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
SECONDARY_CAPTURE_CLASSES = frozenset(uid for uid, name in SUPPORTED_SOP_CLASSES.items() if "Secondary Capture" in name)
MONOCHROME_INTERPRETATIONS = ("MONOCHROME1", "MONOCHROME2")
PIXEL_DATA_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
CHANNEL_ORDER = ("pre-contrast", "FLAIR", "post-contrast")
# Positions closer than this (mm) are the same slice: scanners write positions with rounding noise.
POSITION_TOLERANCE_MM = 0.01
UNDEFINED_LENGTH = 0xFFFFFFFF


class UndecodableDicomError(ServiceError):
    """The file starts like DICOM, but it is truncated or corrupt, or its pixel data does not decode."""

    code = "undecodable_dicom"
    kind = ErrorKind.INVALID_INPUT


class UnsupportedDicomError(ServiceError):
    """A DICOM object we do not read: a non-image or non-MR SOP class, or a transfer syntax without a decoder."""

    code = "unsupported_dicom"
    kind = ErrorKind.UNSUPPORTED_TYPE


class DicomWithoutPixelDataError(ServiceError):
    """An image SOP class whose dataset carries no pixel data (e.g. a header-only export)."""

    code = "dicom_without_pixel_data"
    kind = ErrorKind.INVALID_INPUT


class InvalidDicomImageError(ServiceError):
    """The pixels decode but cannot be a slice (colour, several samples), or instances do not group into slices."""

    code = "invalid_dicom_image"
    kind = ErrorKind.INVALID_INPUT


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


@dataclass(frozen=True, eq=False)
class SliceInput:
    """One model input made of DICOM frames at the same position.

    Attributes
    ----------
    image
        uint8 HxW (one frame, taken as FLAIR) or HxWx3 (pre-contrast, FLAIR, post-contrast).
    channels
        The frames the image was made of, in request order: one, or three as `CHANNEL_ORDER`.
    """

    image: np.ndarray
    channels: tuple[DicomFrame, ...]

    @property
    def reference(self) -> DicomFrame:
        """The FLAIR frame: the one a DICOM SEG frame refers to (the models segment the FLAIR abnormality)."""
        return self.channels[0] if len(self.channels) == 1 else self.channels[1]


def is_dicom(data: bytes) -> bool:
    """True if `data` is a DICOM Part 10 file: a 128-byte preamble followed by ``DICM``."""
    return data[DICOM_PREAMBLE_LENGTH : DICOM_PREAMBLE_LENGTH + len(DICOM_MAGIC)] == DICOM_MAGIC


def read_dicom(data: bytes, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> list[DicomFrame]:
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


def normalise_volume(volume: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Map the modality values of frames of one series to uint8 with one min/max stretch over all of them.

    Why this rule: the kaggle_3m slices the models learned from were made per patient and per sequence by a min/max
    stretch of the whole volume to 0..255. Measured on the development pool, every volume's minimum is 0 and its
    maximum 247..255 while single slices peak at about 195 (median), and no pixel sits at 255 in bulk; a per-slice
    stretch would make slices brighter than training ones, and a percentile stretch would saturate pixels that
    training never saw saturated. So frames of one series are stretched together, exactly like the dataset; a
    single slice sent alone can only be stretched over itself (brighter than in training: send whole series for the
    closest match). A constant volume becomes 0.

    Parameters
    ----------
    volume
        HxW float arrays of one series (any sizes).

    Returns
    -------
    list of numpy.ndarray
        uint8 HxW arrays, in the same order.
    """
    if not volume:
        return []
    low = min(float(np.min(values)) for values in volume)
    high = max(float(np.max(values)) for values in volume)
    span = high - low
    if not np.isfinite(span) or span <= 0:
        return [np.zeros(values.shape, dtype=np.uint8) for values in volume]
    scale = 255.0 / span
    return [np.rint((values.astype(np.float64) - low) * scale).clip(0, 255).astype(np.uint8) for values in volume]


def prepare_inputs(frames: Sequence[DicomFrame]) -> list[SliceInput]:
    """Normalise frames per series and group those at the same position into model inputs.

    Grouping rule: frames sharing Frame of Reference UID, Image Position (Patient) (within `POSITION_TOLERANCE_MM`)
    and Image Orientation (Patient) are one slice. A slice of one frame is FLAIR (the model gets it in all three
    channels, as the dataset does for missing sequences). A slice of three frames, from three different series, is
    pre-contrast, FLAIR, post-contrast in the order the frames were given (file order in the request, then frame
    order). Any other count is refused. Frames without a position are always a slice of their own.

    Parameters
    ----------
    frames
        Frames from `read_dicom`, in request order.

    Returns
    -------
    list of SliceInput
        In the order each slice first appears in `frames`.

    Raises
    ------
    InvalidDicomImageError
        If a position holds 2 or more than 3 frames, three frames there do not come from three series, or the
        frames of a slice differ in size.
    """
    normalised: dict[int, np.ndarray] = {}
    by_series: dict[str, list[int]] = {}
    for index, frame in enumerate(frames):
        by_series.setdefault(frame.series_instance_uid, []).append(index)
    for indices in by_series.values():
        for index, image in zip(indices, normalise_volume([frames[i].values for i in indices]), strict=True):
            normalised[index] = image

    groups: dict[tuple, list[int]] = {}
    for index, frame in enumerate(frames):
        groups.setdefault(_position_key(frame, index), []).append(index)

    inputs = []
    for indices in groups.values():
        members = tuple(frames[i] for i in indices)
        _check_group(members)
        images = [normalised[i] for i in indices]
        image = images[0] if len(images) == 1 else np.stack(images, axis=-1)
        inputs.append(SliceInput(image=image, channels=members))
    return inputs


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
    modality = str(dataset.get("Modality", "") or "")
    if str(sop_class) in SECONDARY_CAPTURE_CLASSES and modality.upper() != "MR":
        raise UnsupportedDicomError(
            "a DICOM Secondary Capture is read only as a capture of an MR slice (Modality MR); "
            f"got Modality {modality or 'missing'}"
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
    bits_stored = int(dataset.get("BitsStored") or dataset.BitsAllocated)
    if transfer_syntax == JPEGExtended12Bit and bits_stored > 8 and not _decodes_12_bit_jpeg():
        raise UnsupportedDicomError(
            f"DICOM transfer syntax {transfer_syntax.name} ({transfer_syntax}) with {bits_stored} bits stored cannot "
            "be decoded by this service (no 12-bit JPEG decoder installed); send it uncompressed or losslessly "
            "compressed"
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


def _decodes_12_bit_jpeg() -> bool:
    """Only pydicom's pylibjpeg plugin (with pylibjpeg-libjpeg, GPL, not installed) decodes 12-bit JPEG; GDCM and
    Pillow, which are, refuse it."""
    try:
        return "pylibjpeg" in get_decoder(JPEGExtended12Bit).available_plugins
    except NotImplementedError:
        return False


def _modality_values(dataset: Dataset, stored: np.ndarray, index: int) -> np.ndarray:
    """Apply the modality LUT first, as the standard orders: a Modality LUT Sequence, else slope and intercept."""
    if "ModalityLUTSequence" in dataset:
        return np.asarray(apply_modality_lut(stored, dataset), dtype=np.float64)
    slope = _frame_value(dataset, index, "PixelValueTransformationSequence", "RescaleSlope")
    intercept = _frame_value(dataset, index, "PixelValueTransformationSequence", "RescaleIntercept")
    values = stored.astype(np.float64)
    if slope is not None and float(slope) != 1.0:
        values *= float(slope)
    if intercept is not None and float(intercept) != 0.0:
        values += float(intercept)
    return values


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


def _floats(value: object, count: int) -> tuple[float, ...] | None:
    if value is None:
        return None
    try:
        items = value if isinstance(value, Sequence) and not isinstance(value, str | bytes) else [value]
        numbers = tuple(float(item) for item in items)
    except (TypeError, ValueError):
        return None
    return numbers if len(numbers) == count else None


def _frame(dataset: Dataset, values: np.ndarray, index: int, frames: int) -> DicomFrame:
    thickness = _floats(_frame_value(dataset, index, "PixelMeasuresSequence", "SliceThickness"), 1)
    between = _floats(_frame_value(dataset, index, "PixelMeasuresSequence", "SpacingBetweenSlices"), 1)
    return DicomFrame(
        values=values,
        header=dataset,
        frame_number=index + 1,
        number_of_frames=frames,
        image_position=_floats(_frame_value(dataset, index, "PlanePositionSequence", "ImagePositionPatient"), 3),
        image_orientation=_floats(
            _frame_value(dataset, index, "PlaneOrientationSequence", "ImageOrientationPatient"), 6
        ),
        pixel_spacing=_floats(_frame_value(dataset, index, "PixelMeasuresSequence", "PixelSpacing"), 2),
        slice_thickness=thickness[0] if thickness else None,
        spacing_between_slices=between[0] if between else None,
    )


def _position_key(frame: DicomFrame, index: int) -> tuple:
    if frame.image_position is None:
        return ("unplaced", index)
    position = tuple(round(value / POSITION_TOLERANCE_MM) for value in frame.image_position)
    orientation = tuple(round(value, 4) for value in frame.image_orientation or ())
    return (frame.frame_of_reference_uid, position, orientation)


def _check_group(members: tuple[DicomFrame, ...]) -> None:
    position = members[0].image_position
    if len(members) not in (1, 3):
        raise InvalidDicomImageError(
            f"frames at one slice position must be 1 (FLAIR) or 3 ({', '.join(CHANNEL_ORDER)}); "
            f"got {len(members)} at position {position}"
        )
    if len(members) == 3:
        series = {member.series_instance_uid for member in members}
        if len(series) != 3:
            raise InvalidDicomImageError(
                f"three frames at one slice position must come from three series ({', '.join(CHANNEL_ORDER)}); "
                f"they come from {len(series)} series at position {position}"
            )
    sizes = {member.values.shape for member in members}
    if len(sizes) != 1:
        raise InvalidDicomImageError(
            f"frames at one slice position must have the same rows x columns; got {sorted(sizes)} at {position}"
        )
