"""Series assembly: DICOM frames of one request grouped into model inputs, intensities normalised per series.

`plan_series` checks every file's header (`app.dicom_header.read_dicom_header`), counts the slices the frames will
make and the memory decoding them will take, all before any pixel is decoded; `decode_series` then decodes the
files, and `prepare_inputs` normalises the frames of each series to uint8 (`normalise_volume`) and groups frames that
lie at the same position into one model input (`SliceInput`): alone it is FLAIR, three together are pre-contrast,
FLAIR, post-contrast in the order they were given. `read_series` is all three. No HTTP here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from app.core.preprocessing import CHANNEL_ORDER, FLAIR_CHANNEL
from app.dicom_frame import DicomFrame, frame_placement
from app.dicom_header import DicomHeader, read_dicom_header
from app.dicom_input import decode_dicom
from app.errors import InvalidDicomImageError, ServiceError, TooManySlicesError
from app.uploads import UploadLimits, check_request_cost, check_upload_size, model_input

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


@dataclass(frozen=True, eq=False)
class SeriesPlan:
    """A request's DICOM files after their headers were checked: each file's header or its refusal, in place, the
    slices the frames will make, and what decoding them all will cost."""

    headers: list[DicomHeader | ServiceError]
    slices: int
    cost_bytes: int

    @property
    def file_errors(self) -> dict[int, ServiceError]:
        return {index: item for index, item in enumerate(self.headers) if isinstance(item, ServiceError)}


def too_many_slices(slices: int, max_slices: int) -> ServiceError:
    """The refusal of a series with more slices than the inference queue could ever hold (`slices` may be a lower
    bound: `count_slices` stops counting past the limit)."""
    return TooManySlicesError(
        f"a request may hold at most {max_slices} slices (INFERENCE_QUEUE_SLICES); got {slices} or more, counted "
        "from the DICOM headers"
    )


def plan_series(
    uploads: Sequence[bytes | ServiceError],
    limits: UploadLimits,
    max_slices: int | None = None,
    refuse_slices: Callable[[int, int], ServiceError] = too_many_slices,
) -> SeriesPlan:
    """Read and check the headers of every DICOM file, count the slices and the decoding cost; nothing is decoded.

    Order: each file's header (a file that fails yields its error in its place), the slices of the request against
    `max_slices` (default `limits.max_request_slices`), each file's cost, then the request's (its files are held
    together, as one series) against `limits.max_decode_bytes`.

    Raises
    ------
    ServiceError
        `refuse_slices(slices, max_slices)` (default `TooManySlicesError`) for too many slices;
        `app.errors.OverMemoryBudgetError` for a request over the budget.
    """
    max_slices = limits.max_request_slices if max_slices is None else max_slices
    headers: list[DicomHeader | ServiceError] = []
    for data in uploads:
        if isinstance(data, ServiceError):
            headers.append(data)
            continue
        try:
            check_upload_size(len(data), limits)
            headers.append(read_dicom_header(data, limits.max_dicom_pixels, limits.max_decode_bytes))
        except ServiceError as error:
            headers.append(error)
    readable = [item for item in headers if isinstance(item, DicomHeader)]
    slices = count_slices(readable, at_most=max_slices)
    if max_slices is not None and slices > max_slices:
        raise refuse_slices(slices, max_slices)
    if limits.max_decode_bytes is not None:
        for index, item in enumerate(headers):
            if isinstance(item, DicomHeader):
                try:
                    item.check_cost(limits.max_decode_bytes)
                except ServiceError as error:
                    headers[index] = error
    costs = [item.cost_bytes for item in headers if isinstance(item, DicomHeader)]
    check_request_cost(sum(costs), len(costs), limits)
    return SeriesPlan(headers, slices, sum(costs))


def count_slices(headers: Sequence[DicomHeader], at_most: int | None = None) -> int:
    """The slices the frames of `headers` make under `prepare_inputs`'s grouping, from the headers alone.

    Frames of one series never share a slice, so then every frame is one; otherwise frames at one place are one.
    Once the count is past `at_most` it stops: the number returned is then only known to be larger than `at_most`.
    """
    frames = sum(header.frames for header in headers)
    series = {str(header.dataset.get("SeriesInstanceUID", "")) for header in headers}
    if len(series) <= 1 or (at_most is not None and -(-frames // 3) > at_most):
        return frames if len(series) <= 1 else -(-frames // 3)
    places: set[tuple] = set()
    for file_index, header in enumerate(headers):
        for index in range(header.frames):
            places.add(_placement_key(*frame_placement(header.dataset, index), ("unplaced", file_index, index)))
            if at_most is not None and len(places) > at_most:
                return len(places)
    return len(places)


def decode_series(plan: SeriesPlan) -> SeriesUploads:
    """Decode the files of a checked plan and group their frames into slices (CPU work: call it off the event loop).

    A file that fails is reported in `file_errors` and left out; frames that cannot be grouped (see
    `prepare_inputs`) fail the whole request, since no slice order could be trusted then.
    """
    frames = []
    errors: dict[int, ServiceError] = {}
    for position, header in enumerate(plan.headers):
        if isinstance(header, ServiceError):
            errors[position] = header
            continue
        try:
            frames.extend(decode_dicom(header))
        except ServiceError as error:
            errors[position] = error
    return SeriesUploads(prepare_inputs(frames) if frames else [], errors)


def read_series(
    uploads: Sequence[bytes | ServiceError], max_pixels: int, max_bytes: int | None = None
) -> SeriesUploads:
    """`plan_series` then `decode_series`, with the pixel limit `max_pixels` and the budget `max_bytes` (None: none)."""
    limits = UploadLimits(max_dicom_pixels=max_pixels, max_decode_bytes=max_bytes)
    return decode_series(plan_series(uploads, limits))


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
    return _placement_key(frame.frame_of_reference_uid, frame.image_position, frame.image_orientation, index)


def _placement_key(
    frame_of_reference_uid: str,
    image_position: tuple[float, ...] | None,
    image_orientation: tuple[float, ...] | None,
    fallback: object,
) -> tuple:
    """Frames with the same key are one slice; a frame without a position gets its own (`fallback`)."""
    if image_position is None:
        return ("unplaced", fallback)
    position = tuple(round(value / POSITION_TOLERANCE_MM) for value in image_position)
    orientation = tuple(round(value, 4) for value in image_orientation or ())
    return (frame_of_reference_uid, position, orientation)


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
