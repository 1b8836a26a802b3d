"""One decoded DICOM frame (`DicomFrame`) and the per-frame attributes read from its header: where it lies in the
patient and what a DICOM SEG needs to refer back to it.

Enhanced multi-frame objects say per frame (or once for all frames) in functional groups what single-frame objects
say at the top level; `frame_value` looks in that order. Nothing here logs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as PydicomSequence
from pydicom.uid import (
    EnhancedMRImageStorage,
    LegacyConvertedEnhancedMRImageStorage,
    MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
    MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
)

from app.errors import InvalidDicomImageError

# Longest pixel spacing, slice thickness or slice spacing taken at its word: a metre is far beyond any MR image.
MAX_LENGTH_MM = 1000.0
# Shortest one: a micrometre is far below any MR image's pixel (a Pixel Spacing of 1e-300 gives a tumor of 0.0 mL,
# its area underflowing to 0).
MIN_LENGTH_MM = 1e-3
# Farthest Image Position (Patient) coordinate from the origin taken: a kilometre is beyond any scanner's frame, and
# a finite 1e307 mm overflowed the arithmetic that groups frames into slices (an internal error, attack review).
MAX_POSITION_MM = 1e6
# The image classes the service reads whose IOD is multi-frame (references to them name the frame), whatever their
# number of frames.
MULTI_FRAME_CLASSES = frozenset(
    {
        EnhancedMRImageStorage,
        LegacyConvertedEnhancedMRImageStorage,
        MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
        MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
    }
)


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
        """ "" when the file has none (so that a batch answer does not fail with a 500); a SEG or SR refuses it."""
        return str(self.header.get("SOPInstanceUID", "") or "")

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
        """Whether the instance is multi-frame: more than one frame, or a multi-frame IOD (Enhanced MR, a multi-frame
        Secondary Capture) of one. A Number of Frames of 1 in a single-frame class (MR Image, Secondary Capture),
        which some converters write, does not make it one: read so, an MR series of such files got no SEG and no SR,
        and a capture's SEG named frame 1 of an image that has no frames (interop review 62 F7)."""
        return self.number_of_frames > 1 or str(self.header.get("SOPClassUID", "")) in MULTI_FRAME_CLASSES


def slice_normal(frames: Sequence[DicomFrame]) -> np.ndarray | None:
    """The normal of the slices' plane (row direction x column direction); None when no frame has an orientation.
    Positions projected on it give the slices' order and spacing.

    Of the orientations the frames give (one, but rounded file by file), the least: one choice whatever the
    files' order, as the first frame's was not (at 45 degrees, rounding decides which way `patient_axis_positive`
    turns the normal, and with it the slices' order)."""
    orientations = [tuple(frame.image_orientation) for frame in frames if frame.image_orientation]
    if not orientations:
        return None
    orientation = np.asarray(min(orientations), dtype=np.float64)
    return np.cross(orientation[:3], orientation[3:])


def offsets_along_normal(frames: Sequence[DicomFrame]) -> np.ndarray | None:
    """Each frame's Image Position projected on the slice normal, in mm (on the line the positions span when no
    frame has an orientation); None unless every frame has a position.

    The normal points along its patient axis's positive way (an axial series' from the feet to the head): row x
    column points the other way for a series stored mirrored, and the line the positions span depends on the order
    the frames came in, so the slices sorted by these offsets come in one order however the series is stored."""
    positions = [frame.image_position for frame in frames]
    if not positions or any(position is None for position in positions):
        return None
    points = np.asarray(positions, dtype=np.float64)
    direction = slice_normal(frames)
    if direction is None:
        direction = points[np.argmax(np.linalg.norm(points - points[0], axis=1))] - points[0]
        length = np.linalg.norm(direction)
        direction = direction / length if length > 0 else direction
    return points @ patient_axis_positive(direction)


def patient_axis_positive(direction: np.ndarray) -> np.ndarray:
    """`direction` or its opposite, whichever points along the positive way of its patient axis: the first of z, y, x
    whose component is within 1e-3 (rounding) of the largest. A fixed preference, not the largest alone: at 45
    degrees, orientations rounded differently file by file would pick different axes, and the slices' order would
    follow the order the files came in."""
    magnitudes = np.abs(direction)
    axis = next(index for index in (2, 1, 0) if magnitudes[index] >= magnitudes.max() - 1e-3)
    return -direction if direction[axis] < 0 else direction


def frame_value(dataset: Dataset, index: int, sequence: str, keyword: str) -> object | None:
    """An attribute of frame `index`: per-frame functional group, then shared group, then the top level."""
    candidates = []
    per_frame = _sequence(dataset, "PerFrameFunctionalGroupsSequence")
    if index < len(per_frame):
        candidates.append(per_frame[index])
    shared = _sequence(dataset, "SharedFunctionalGroupsSequence")
    if shared:
        candidates.append(shared[0])
    for group in candidates:
        items = _sequence(group, sequence)
        if items and keyword in items[0]:
            return items[0][keyword].value
    return dataset.get(keyword)


def element_values(value: object) -> list[object]:
    """An attribute's values as a list: none when absent or empty, one for text, bytes or a number, each of a
    multi-valued one. The series' facts and the SEG's lossy attributes read values this one way."""
    if value is None or value == "":
        return []
    if isinstance(value, str | bytes):
        return [value]
    try:
        return list(value)  # type: ignore[call-overload]
    except TypeError:
        return [value]


def source_instance_uids(dataset: Dataset) -> frozenset[str]:
    """The SOP Instance UIDs a file names in its Source Image Sequence, each once, empty ones left out; none when the
    element is anything but a sequence (stored as LO, the characters of its text would be walked as
    items, a 500; and a copy naming its original 40,000 times is compared with it once)."""
    return frozenset(
        uid
        for item in _sequence(dataset, "SourceImageSequence")
        if (uid := str(item.get("ReferencedSOPInstanceUID", "") or ""))
    )


def _sequence(dataset: Dataset, keyword: str) -> PydicomSequence | list:
    """The items of sequence `keyword`; none when it is absent, or present as anything but a sequence (a value of
    another type cannot hold a frame's attributes)."""
    value = dataset.get(keyword)
    return value if isinstance(value, PydicomSequence) else []


def _lengths(numbers: tuple[float, ...] | None) -> tuple[float, ...] | None:
    """Spacings and thicknesses in mm, or None (unknown, so no volume) unless every one is at least `MIN_LENGTH_MM`
    and at most `MAX_LENGTH_MM`: a zero, negative, vanishing or astronomic spacing would give a volume of 0, below 0
    or infinite."""
    if numbers is None or not all(MIN_LENGTH_MM <= number <= MAX_LENGTH_MM for number in numbers):
        return None
    return numbers


def _floats(value: object, count: int, keyword: str) -> tuple[float, ...] | None:
    """`count` finite numbers, or None when absent or empty (geometry is optional); a 400 naming the element for
    any other value: a position of two numbers or of text cannot place a slice, and taken as absent it went on to
    fail the SEG with a library's message (attack finding)."""
    if value is None or (isinstance(value, str | bytes | Sequence) and len(value) == 0):
        return None
    try:
        items = value if isinstance(value, Sequence) and not isinstance(value, str | bytes) else [value]
        numbers = tuple(float(item) for item in items)
    except (TypeError, ValueError):
        raise InvalidDicomImageError(f"{keyword} must hold {count} decimal numbers") from None
    if len(numbers) != count:
        raise InvalidDicomImageError(f"{keyword} must hold {count} numbers; it holds {len(numbers)}")
    if not all(math.isfinite(number) for number in numbers):
        raise InvalidDicomImageError(f"{keyword} must hold finite numbers")
    return numbers


def _position(numbers: tuple[float, ...] | None) -> tuple[float, ...] | None:
    """Image Position (Patient) in mm, or a 400 beyond `MAX_POSITION_MM` of the origin in any coordinate."""
    if numbers is not None and any(abs(number) > MAX_POSITION_MM for number in numbers):
        raise InvalidDicomImageError(
            f"ImagePositionPatient must be within {MAX_POSITION_MM:.0f} mm of the origin in each coordinate; "
            f"got {max(numbers, key=abs):g}"
        )
    return numbers


# How far direction cosines may be from unit length and from orthogonal: rounding to 6 decimals (what scanners
# write) is far within it; an orientation of length 2 (attack finding: a tumor volume 4 times too large) is not.
DIRECTION_COSINE_TOLERANCE = 0.01


def _orientation(numbers: tuple[float, ...] | None) -> tuple[float, ...] | None:
    """Image Orientation (Patient): two unit-length, orthogonal direction cosines, or a 400. Every length along the
    normal (slice spacing, so the tumor volume) is measured with them."""
    if numbers is None:
        return None
    row, column = np.asarray(numbers[:3]), np.asarray(numbers[3:])
    if (
        abs(np.linalg.norm(row) - 1.0) > DIRECTION_COSINE_TOLERANCE
        or abs(np.linalg.norm(column) - 1.0) > DIRECTION_COSINE_TOLERANCE
        or abs(float(row @ column)) > DIRECTION_COSINE_TOLERANCE
    ):
        raise InvalidDicomImageError(
            "ImageOrientationPatient must hold two unit-length, orthogonal direction cosines (row, then column)"
        )
    return numbers


def frame_placement(dataset: Dataset, index: int) -> tuple[str, tuple[float, ...] | None, tuple[float, ...] | None]:
    """Frame of Reference UID, Image Position and Image Orientation (Patient) of frame `index` (0-based), read from
    the header alone: what groups frames into slices."""
    position = _position(
        _floats(frame_value(dataset, index, "PlanePositionSequence", "ImagePositionPatient"), 3, "ImagePositionPatient")
    )
    orientation = _orientation(
        _floats(
            frame_value(dataset, index, "PlaneOrientationSequence", "ImageOrientationPatient"),
            6,
            "ImageOrientationPatient",
        )
    )
    return str(dataset.get("FrameOfReferenceUID", "")), position, orientation


def frame_at(dataset: Dataset, values: np.ndarray, index: int, frames: int) -> DicomFrame:
    """Frame `index` (0-based) of `frames`: its decoded `values` with its geometry read from `dataset`."""
    return DicomFrame(
        values=values, header=dataset, frame_number=index + 1, number_of_frames=frames, **frame_geometry(dataset, index)
    )


def frame_geometry(dataset: Dataset, index: int) -> dict[str, tuple[float, ...] | float | None]:
    """Position, orientation, pixel spacing, slice thickness and spacing between slices of frame `index`, from the
    header alone (`DicomFrame`'s fields of those names); a 400 naming a malformed element."""

    def floats(sequence: str, keyword: str, count: int) -> tuple[float, ...] | None:
        return _floats(frame_value(dataset, index, sequence, keyword), count, keyword)

    def readable(keyword: str) -> tuple[float, ...] | None:
        # Slice Thickness and Spacing Between Slices as some software writes them ("5,0", "5mm"): unknown, not a
        # 400; the slices' positions give their spacing, and without them there is no volume.
        try:
            return floats("PixelMeasuresSequence", keyword, 1)
        except InvalidDicomImageError:
            return None

    thickness = _lengths(readable("SliceThickness"))
    between = _lengths(readable("SpacingBetweenSlices"))
    return {
        "image_position": _position(floats("PlanePositionSequence", "ImagePositionPatient", 3)),
        "image_orientation": _orientation(floats("PlaneOrientationSequence", "ImageOrientationPatient", 6)),
        "pixel_spacing": _lengths(floats("PixelMeasuresSequence", "PixelSpacing", 2)),
        "slice_thickness": thickness[0] if thickness else None,
        "spacing_between_slices": between[0] if between else None,
    }
