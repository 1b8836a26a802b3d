"""Series assembly: DICOM frames of one request grouped into model inputs, intensities normalised per series.

`read_series` reads every file (`app.dicom_input.read_dicom`) and `prepare_inputs` normalises the frames of each
series to uint8 (`normalise_volume`) and groups frames that lie at the same position into one model input
(`SliceInput`): alone it is FLAIR, three together are pre-contrast, FLAIR, post-contrast in the order they were given.
No HTTP here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from app.core.preprocessing import CHANNEL_ORDER, FLAIR_CHANNEL
from app.dicom_input import DicomFrame, read_dicom
from app.errors import InvalidDicomImageError, ServiceError
from app.uploads import model_input

# Positions closer than this (mm) are the same slice: scanners write positions with rounding noise.
POSITION_TOLERANCE_MM = 0.01


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
        return self.channels[0] if len(self.channels) == 1 else self.channels[FLAIR_CHANNEL]


@dataclass
class SeriesUploads:
    """The slices of the DICOM files that could be read, and the errors of those that could not (by position)."""

    inputs: list[SliceInput]
    file_errors: dict[int, ServiceError] = field(default_factory=dict)


def read_series(uploads: Sequence[bytes | ServiceError], max_pixels: int) -> SeriesUploads:
    """Read every DICOM file and group its frames into slices (CPU work: call it off the event loop).

    A file that fails is reported in `file_errors` and left out; frames that cannot be grouped (see
    `prepare_inputs`) fail the whole request, since no slice order could be trusted then.
    """
    frames = []
    errors: dict[int, ServiceError] = {}
    for position, data in enumerate(uploads):
        if isinstance(data, ServiceError):
            errors[position] = data
            continue
        try:
            frames.extend(read_dicom(data, max_pixels))
        except ServiceError as error:
            errors[position] = error
    return SeriesUploads(prepare_inputs(frames) if frames else [], errors)


def model_inputs(inputs: Sequence[SliceInput]) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """The model batch (`app.uploads.model_input`, as for raster uploads) and the original size of each slice."""
    batch = np.stack([model_input(slice_input.image) for slice_input in inputs])
    return batch, [(int(item.image.shape[0]), int(item.image.shape[1])) for item in inputs]


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
