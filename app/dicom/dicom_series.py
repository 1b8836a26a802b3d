"""Series assembly: decoded DICOM frames grouped into model inputs, intensities normalised per series.

`prepare_inputs` normalises the frames of each series to uint8 (`normalise_volume`) and groups frames that lie at the
same position into one model input (`SliceInput`): alone it is FLAIR, three together are pre-contrast, FLAIR,
post-contrast in the order the series choice gives. `model_inputs` shows each slice to the models as they learned
slices (square pixels, the learned in-plane orientation) and `in_stored_orientation` brings the masks back. Which
files of a request are read, and within which limits, is `app.series.reading`; this module knows no request. No HTTP
here.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from app.core.preprocessing import CHANNEL_ORDER, FLAIR_CHANNEL, INPUT_SHAPE
from app.dicom.dicom_frame import DicomFrame, frame_value, source_instance_uids
from app.dicom.slice_orientation import InPlaneTurn, in_plane_turn
from app.dicom.square_pixels import SquarePixels, pixel_aspect, square_pixels
from app.errors import InvalidDicomImageError
from app.intensity_range import stretch_in_place, stretch_range
from app.model_input import model_input

if TYPE_CHECKING:
    from app.inference import SlicePrediction

# Positions closer than this (mm) are the same slice: scanners write positions with rounding noise.
POSITION_TOLERANCE_MM = 0.01
# Direction cosines closer than this are the same plane (rounding noise in Image Orientation (Patient)).
SAME_PLANE_TOLERANCE = 1e-3
# Pixel spacings of the frames stacked into one slice, or of the slices of one series, may differ by this share
# (rounding in Pixel Spacing).
PIXEL_SPACING_TOLERANCE = 0.01
# The widest field of view (mm, either side of a slice) a head slice can have; body MR reaches 500 mm. A Pixel Spacing
# that spreads the slice wider contradicts its image (3.75 mm rows on a 256 x 256 head slice, a slip in the header,
# would be resampled into a sliver and answered "no tumor").
MAX_FIELD_OF_VIEW_MM = 500.0
MAX_FIELD_OF_VIEW_ASPECT = 2.0
"""The most times a head slice's field of view is longer one way than the other (axial, coronal and sagittal ones are
at most about 2:1; 166 x 416 mm tumor slices, under 3:1, would be answered "no tumor, 0.0 mL")."""


@dataclass(frozen=True, eq=False)
class SliceInput:
    """One model input made of DICOM frames at the same position.

    Attributes
    ----------
    image
        uint8 HxW (one frame, taken as FLAIR) or HxWx3 (pre-contrast, FLAIR, post-contrast).
    channels
        The frames the image was made of: one, or three as `CHANNEL_ORDER`.
    file_index
        Position in the request of the file the FLAIR frame was read from, as the answers number files
        (`app.series.reading.decode_series` sets it; None outside a request).
    """

    image: np.ndarray
    channels: tuple[DicomFrame, ...]
    file_index: int | None = None

    @property
    def reference(self) -> DicomFrame:
        """The FLAIR frame: the one a DICOM SEG frame refers to (the models segment the FLAIR abnormality)."""
        return self.channels[0] if len(self.channels) == 1 else self.channels[FLAIR_CHANNEL]


def non_square_pixels_note(frames: Sequence[DicomFrame]) -> str | None:
    """A note for the answer when the slices' pixels are not square (Pixel Spacing rows != columns), else None.

    Such slices are resampled to square pixels for the models (`app.dicom.square_pixels`) and their masks mapped
    back, which the answer says (a mask drawn on a resampled slice is interpolated along one axis); a slice too far
    from square to resample is read pixel for pixel, and the note says the masks may be less accurate. Says the
    ratio, not the file's values."""
    off = [(frame, aspect) for frame in frames if (aspect := pixel_aspect(frame.pixel_spacing)) != 1.0]
    if not off:
        return None
    aspect = off[0][1]  # one Pixel Spacing per series (`prepare_inputs` refuses others)
    shape = f"each {aspect:.2f} times as tall as wide" if aspect > 1 else f"each {1 / aspect:.2f} times as wide as tall"
    if all(not square_pixels(frame.values.shape, frame.pixel_spacing).is_identity for frame, _ in off):
        return (
            f"the slices' pixels are not square ({shape}): the models, which learned square pixels, read them "
            "resampled to square pixels, and the masks were mapped back to the stored pixels"
        )
    return (
        f"the slices' pixels are not square ({shape}) and too far from square to resample: the models read "
        "them pixel for pixel, as they learned square pixels, so the anatomy looks distorted to them and the masks "
        "may be less accurate"
    )


def model_inputs(inputs: Sequence[SliceInput]) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """The model batch (`app.model_input`, as for raster uploads) and the size of each slice, each slice
    turned in-plane to the orientation the models learned when axial (`app.dicom.slice_orientation`) and resampled
    to square pixels (`app.dicom.square_pixels`); `in_stored_orientation` maps the answers' masks back."""
    batch = np.empty((len(inputs), *INPUT_SHAPE), dtype=np.float32)  # filled in place: no second copy of the batch
    sizes = []
    for index, item in enumerate(inputs):
        turn, resampling = _model_view(item)
        image = resampling.apply(turn.apply(item.image))
        batch[index] = model_input(image)
        sizes.append((int(image.shape[0]), int(image.shape[1])))
    return batch, sizes


def in_stored_orientation(
    predictions: Sequence[SlicePrediction], inputs: Sequence[SliceInput]
) -> list[SlicePrediction]:
    """The models' answers for `model_inputs(inputs)` with each mask resampled back and turned back to its slice's
    stored pixels (a resampled slice's answer says the size the models saw it at, in its stored pixel order,
    `SlicePrediction.seen`)."""
    answers = []
    for prediction, item in zip(predictions, inputs, strict=True):
        turn, resampling = _model_view(item)
        if prediction.mask is not None and not (turn.is_identity and resampling.is_identity):
            prediction = replace(prediction, mask=turn.undo(resampling.undo(prediction.mask)))
        if not resampling.is_identity:  # the clean-ups count sizes on the grid the models saw
            rows, columns = resampling.resampled
            prediction = replace(prediction, seen=(columns, rows) if turn.transpose else (rows, columns))
        answers.append(prediction)
    return answers


def _model_view(item: SliceInput) -> tuple[InPlaneTurn, SquarePixels]:
    """How `item` is shown to the models: turned first, then resampled to square pixels along the turned rows and
    columns, so the same slice stored transposed or flipped reaches the models as the same pixels (resampling is not
    quite the same along rows and along columns)."""
    reference = item.reference
    turn = in_plane_turn(reference.image_orientation)
    shape, spacing = item.image.shape[:2], reference.pixel_spacing
    if turn.transpose:
        shape, spacing = shape[::-1], None if spacing is None else (spacing[1], spacing[0])
    return turn, square_pixels(shape, spacing)


def normalise_volume(volume: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Map the modality values of frames of one series to uint8 with one min/max stretch over all of them.

    Why this rule: the kaggle_3m slices the models learned from were made per patient and per sequence by a min/max
    stretch of the whole volume to 0..255. Measured on the development pool, every volume's minimum is 0 and its
    maximum 247..255 while single slices peak at about 195 (median), and no pixel sits at 255 in bulk; a per-slice
    stretch would make slices brighter than training ones, and a percentile stretch would saturate pixels that
    training never saw saturated. So frames of one series are stretched together, exactly like the dataset; a
    single slice sent alone can only be stretched over itself (brighter than in training: send whole series for the
    closest match). A constant volume becomes 0 (`decode_series` refuses a blank series of several frames). A few
    pixels far above the rest (`app.intensity_range`) saturate instead of darkening everything else.

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
    low, high = stretch_range(volume)
    return [stretch_in_place(values.astype(np.float64), low, high) for values in volume]


def prepare_inputs(frames: Sequence[DicomFrame], channel_series: Sequence[str] = ()) -> list[SliceInput]:
    """Normalise frames per series and group those at the same position into model inputs.

    Grouping rule: frames sharing Frame of Reference UID, Image Position (Patient) (within `POSITION_TOLERANCE_MM`)
    and Image Orientation (Patient) are one slice. A slice of one frame is FLAIR (the model gets it in all three
    channels, as the dataset does for missing sequences). A slice of three frames, from three different series, is
    pre-contrast, FLAIR, post-contrast: in the order of `channel_series` (the flow's choice,
    `app.series.choice.choose_series`), or as the frames were given when it is empty. Any other count is refused,
    and with three `channel_series` so is a slice without all three. Frames without a position are always a slice of
    their own.

    Parameters
    ----------
    frames
        Frames from `app.dicom.dicom_input.decode_dicom`, in request order.
    channel_series
        Series Instance UIDs in channel order: (pre, FLAIR, post), or (FLAIR,), or () to keep the frames' order.

    Returns
    -------
    list of SliceInput
        In the order each slice's FLAIR frame (its first frame without `channel_series`) appears in `frames`, so the
        order the series were sent in does not matter.

    Raises
    ------
    InvalidDicomImageError
        If a position holds 2 or more than 3 frames, three frames there do not come from three series (with
        `channel_series`: not one from each), the frames of a slice differ in size, or the slices do not share one
        plane, one rows x columns and one Pixel Spacing within a head's field of view (`_check_volume`).
    """
    normalised: dict[int, np.ndarray] = {}
    by_series: dict[str, list[int]] = {}
    for index, frame in enumerate(frames):
        by_series.setdefault(frame.series_instance_uid, []).append(index)
    for indices in by_series.values():
        for index, image in zip(indices, normalise_volume([frames[i].values for i in indices]), strict=True):
            normalised[index] = image

    groups: dict[int, list[int]] = {}
    places = SlicePlaces()
    for index, frame in enumerate(frames):
        place = places.place(frame.frame_of_reference_uid, frame.image_position, frame.image_orientation)
        groups.setdefault(place, []).append(index)

    channel = {uid: position for position, uid in enumerate(channel_series)}
    ordered: list[tuple[int, SliceInput]] = []
    for indices in groups.values():
        if len(channel_series) == 3:
            _check_channels([frames[i] for i in indices], channel_series)
            indices = sorted(indices, key=lambda i: channel[frames[i].series_instance_uid])
        members = tuple(frames[i] for i in indices)
        _check_group(members)
        images = [normalised[i] for i in indices]
        image = images[0] if len(images) == 1 else np.stack(images, axis=-1)
        first = indices[FLAIR_CHANNEL] if len(channel_series) == 3 else indices[0]
        ordered.append((first, SliceInput(image=image, channels=members)))
    slices = [item for _, item in sorted(ordered, key=lambda pair: pair[0])]
    _check_volume(slices)
    return slices


def _check_volume(slices: Sequence[SliceInput]) -> None:
    """The slices of a series are one volume: one coordinate system, one plane and one matrix. Otherwise the series
    clean-up would join masks of slices that do not lie one above the other, and the volume would add up areas of
    different planes."""
    _check_frame_of_reference(slices)
    orientations = [item.reference.image_orientation for item in slices if item.reference.image_orientation]
    if any(
        np.max(np.abs(np.subtract(orientation, orientations[0]))) > SAME_PLANE_TOLERANCE for orientation in orientations
    ):
        planes = sorted({tuple(round(value, 3) for value in orientation) for orientation in orientations})
        raise InvalidDicomImageError(
            f"the slices of one series must lie in one plane; they have {len(planes)} orientations (Image "
            f"Orientation (Patient) {', '.join(str(list(plane)) for plane in planes[:3])}): send each plane as a "
            "request of its own"
        )
    sizes = sorted({item.image.shape[:2] for item in slices})
    if len(sizes) > 1:
        raise InvalidDicomImageError(
            "the slices of one series must share rows x columns; got "
            f"{', '.join(f'{rows} x {columns}' for rows, columns in sizes)}"
        )
    _check_pixel_spacing(slices)


def _check_frame_of_reference(slices: Sequence[SliceInput]) -> None:
    """The slices of a series name one Frame of Reference UID, or none does.

    Why: Image Position (Patient) is a position in the Frame of Reference's coordinate system (PS3.3 C.7.6.2.1.1);
    positions of two systems stacked as one series interleave two slabs at half their spacing, and a 122 mL tumor
    would be answered 59 mL without a note."""
    uids = [item.reference.frame_of_reference_uid for item in slices]
    named = set(filter(None, uids))
    if len(named) > 1:
        raise InvalidDicomImageError(
            f"the slices of one series must share one Frame of Reference UID (their positions are coordinates in "
            f"it); they name {len(named)}: send the slices of each as a request of its own"
        )
    if named and "" in uids:
        raise InvalidDicomImageError(
            f"the slices of one series must all have a Frame of Reference UID (their positions are coordinates in it) "
            f"or all lack it; {uids.count('')} of {len(uids)} lack it"
        )


def _check_pixel_spacing(slices: Sequence[SliceInput]) -> None:
    """The slices of a series share one Pixel Spacing (or all lack it), and it gives them a head's field of view.

    Why: masks of slices at different scales cannot be joined into one volume by the series clean-up (1.25, 0.9375
    and 0.5 mm pixels would be answered as one volume), and a spacing that makes a slice wider than any
    head (`MAX_FIELD_OF_VIEW_MM`) is a header that does not describe its pixels: resampled by it, a visible tumor
    would be answered "no tumor"; so is one whose proportions are no head's (`MAX_FIELD_OF_VIEW_ASPECT`)."""
    spacings = [item.reference.pixel_spacing for item in slices]
    known = sorted({spacing for spacing in spacings if spacing is not None})
    if known and len(known) < len(spacings) and None in spacings:
        raise InvalidDicomImageError(
            "the slices of one series must all have a Pixel Spacing or all lack it; "
            f"{spacings.count(None)} of {len(spacings)} lack it"
        )
    if any(not np.allclose(spacing, known[0], rtol=PIXEL_SPACING_TOLERANCE, atol=0) for spacing in known[1:]):
        raise InvalidDicomImageError(
            "the slices of one series must share one Pixel Spacing (their masks are joined into one volume); got "
            f"{', '.join(f'{rows:g} x {columns:g}' for rows, columns in known[:4])} mm: send each as a request of its "
            "own"
        )
    if not known:
        return
    rows, columns = slices[0].image.shape[:2]
    row_spacing, column_spacing = known[0]
    height, width = rows * row_spacing, columns * column_spacing
    if max(height, width) > MAX_FIELD_OF_VIEW_MM:
        raise InvalidDicomImageError(
            f"Pixel Spacing gives the slices a field of view of {height:.0f} x {width:.0f} mm, wider than any head "
            f"slice (at most {MAX_FIELD_OF_VIEW_MM:.0f} mm): the header does not describe these pixels; correct "
            "Pixel Spacing or leave it out"
        )
    if max(height, width) > MAX_FIELD_OF_VIEW_ASPECT * min(height, width):
        # 1.95 x 0.4875 mm pixels (499 x 125 mm) pass the width limit, and the tumor slices, resampled into slivers
        # by them, would be answered "no tumor, 0.0 mL".
        raise InvalidDicomImageError(
            f"Pixel Spacing gives the slices a field of view of {height:.0f} x {width:.0f} mm, "
            f"{max(height, width) / min(height, width):.1f} times as long one way as the other; no head slice is "
            f"longer than {MAX_FIELD_OF_VIEW_ASPECT:g} times its width: the header does not describe these pixels; "
            "correct Pixel Spacing or leave it out"
        )


def _check_channels(members: Sequence[DicomFrame], channel_series: Sequence[str]) -> None:
    """Three chosen series: every slice holds one frame of each (else the T1 slices do not pair with FLAIR's)."""
    found = sorted(member.series_instance_uid for member in members)
    if found != sorted(channel_series):
        position = members[0].image_position
        missing = [name for name, uid in zip(CHANNEL_ORDER, channel_series, strict=True) if uid not in found]
        if len(set(found)) < len(found) or not missing:
            raise InvalidDicomImageError(
                f"a slice of three series needs one frame of each ({', '.join(CHANNEL_ORDER)}); got {len(members)} "
                f"frame(s) from {len(set(found))} of them at position {position}"
            )
        has = "has" if len(missing) == 1 else "have"
        raise InvalidDicomImageError(
            f"a slice of three series needs one frame of each ({', '.join(CHANNEL_ORDER)}); the "
            f"{' and '.join(missing)} series {has} none at position {position}"
        )


class SlicePlaces:
    """The slices frames make: frames in one Frame of Reference whose Image Positions (Patient) are within
    `POSITION_TOLERANCE_MM` of each other in every coordinate, and whose orientations are within
    `SAME_PLANE_TOLERANCE`, are one slice; a frame without a position is a slice of its own.

    A frame joins the first slice it is that close to. Positions are kept in cells of the tolerance's size, so a
    frame is compared with the slices of its own and the neighbouring cells only (rounding each position to a grid
    instead would split two positions 0.0002 mm apart across a grid line)."""

    def __init__(self) -> None:
        self.count = 0
        self._cells: dict[tuple, list[tuple[int, tuple[float, ...], tuple[float, ...]]]] = {}

    def place(
        self,
        frame_of_reference_uid: str,
        image_position: tuple[float, ...] | None,
        image_orientation: tuple[float, ...] | None,
    ) -> int:
        """The number (0, 1, ...) of the slice a frame lying there belongs to; a new one if none is that close."""
        if image_position is None:
            return self._new_slice()
        orientation = tuple(image_orientation or ())
        cell = tuple(math.floor(value / POSITION_TOLERANCE_MM) for value in image_position)
        for offset in itertools.product((-1, 0, 1), repeat=len(cell)):
            near = tuple(index + step for index, step in zip(cell, offset, strict=True))
            for number, position, other in self._cells.get((frame_of_reference_uid, near), []):
                if _close(position, image_position, POSITION_TOLERANCE_MM) and (
                    len(other) == len(orientation) and _close(other, orientation, SAME_PLANE_TOLERANCE)
                ):
                    return number
        number = self._new_slice()
        self._cells.setdefault((frame_of_reference_uid, cell), []).append((number, tuple(image_position), orientation))
        return number

    def _new_slice(self) -> int:
        self.count += 1
        return self.count - 1


def _close(first: Sequence[float], second: Sequence[float], tolerance: float) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(first, second, strict=True))


# Each echo or acquisition attribute with the functional group where a multi-frame file keeps it per frame: an
# Enhanced MR in its MR Echo and Frame Content groups, a Legacy Converted Enhanced MR the classic ones in its
# Unassigned Per-Frame Converted Attributes. A single-frame file keeps them at its top level, where `frame_value`
# falls back.
UNASSIGNED_PER_FRAME = "UnassignedPerFrameConvertedAttributesSequence"
ECHO_AND_ACQUISITION_ATTRIBUTES = (
    ("EchoNumbers", UNASSIGNED_PER_FRAME),
    ("EchoTime", UNASSIGNED_PER_FRAME),
    ("EffectiveEchoTime", "MREchoSequence"),
    ("AcquisitionNumber", UNASSIGNED_PER_FRAME),
    ("FrameAcquisitionNumber", "FrameContentSequence"),
    ("TemporalPositionIdentifier", UNASSIGNED_PER_FRAME),
    ("TemporalPositionIndex", "FrameContentSequence"),
)


def _attributes_that_tell_apart(members: Sequence[DicomFrame]) -> str:
    """The names of the echo and acquisition attributes whose values differ between `members` ("" if none do),
    each frame's own (an Enhanced MR keeps its echoes per frame: its frames would seem alike).
    Names only: the values are the files' content."""
    differing = [
        keyword
        for keyword, group in ECHO_AND_ACQUISITION_ATTRIBUTES
        if len({_frame_text(member, group, keyword) for member in members}) > 1
    ]
    return " and ".join(differing)


def _frame_text(member: DicomFrame, group: str, keyword: str) -> str:
    value = frame_value(member.header, member.frame_number - 1, group, keyword)
    return "" if value is None else str(value)


def _copies_of_one_another(members: Sequence[DicomFrame]) -> bool:
    """Whether one of `members` names another as its source (Source Image Sequence): a lossy-compressed copy must
    have a new SOP Instance UID (PS3.3 C.7.6.1.1.5) and names its original there."""
    present = {member.sop_instance_uid for member in members}
    return any(source_instance_uids(member.header) & (present - {member.sop_instance_uid}) for member in members)


def _check_group(members: tuple[DicomFrame, ...]) -> None:
    position = members[0].image_position
    series = {member.series_instance_uid for member in members}
    if len(members) > 1 and len(series) == 1:
        files = {member.sop_instance_uid for member in members}
        frames = {(member.sop_instance_uid, member.frame_number) for member in members}
        if len(frames) < len(members):
            where = "the same instance (SOP Instance UID) sent more than once"
        elif _copies_of_one_another(members):  # before echoes: a copy may store them otherwise
            raise InvalidDicomImageError(
                f"{len(members)} frames lie at one slice position {position}: the same slice arrived more than once "
                "under different SOP Instance UIDs (one names another in its Source Image Sequence: the series sent "
                "again after lossy compression, say); send one copy of the series"
            )
        elif told_apart := _attributes_that_tell_apart(members):
            # A multi-echo (PD/T2) or repeated acquisition: the files are one per image, but the models read one
            # image per position, and which one is FLAIR is not for the service to guess.
            # Checked before a multi-frame file's own fault: an Enhanced MR of two echoes has a position per frame,
            # and would be told to give one.
            images, held_in = ("frames", "one multi-frame file") if len(files) == 1 else ("files", "one series")
            raise InvalidDicomImageError(
                f"{len(members)} {images} of {held_in} lie at each slice position (first at {position}), told apart "
                f"by {told_apart}: the series holds several echoes or acquisitions, and the models read one image "
                f"per slice position; send the {images} of one echo and one acquisition (the FLAIR ones) only"
            )
        elif len(files) == 1:
            where = (
                "one multi-frame file that gives no position per frame (a cine, or a stack without its Plane Position "
                "per frame)"
            )
        else:
            where = f"{len(files)} files of one series with the same ImagePositionPatient"
        raise InvalidDicomImageError(
            f"{len(members)} frames lie at one slice position {position}, from {where}; each slice needs a position "
            "of its own: send one file per slice, or an Enhanced MR file with a position per frame"
        )
    if len(members) not in (1, 3):
        raise InvalidDicomImageError(
            f"frames at one slice position must be 1 (FLAIR) or 3 ({', '.join(CHANNEL_ORDER)}); "
            f"got {len(members)} at position {position}"
        )
    if len(members) == 3 and len(series) != 3:
        raise InvalidDicomImageError(
            f"three frames at one slice position must come from three series ({', '.join(CHANNEL_ORDER)}); "
            f"they come from {len(series)} series at position {position}"
        )
    sizes = {member.values.shape for member in members}
    if len(sizes) != 1:
        raise InvalidDicomImageError(
            f"frames at one slice position must have the same rows x columns; got {sorted(sizes)} at {position}"
        )
    spacings = [member.pixel_spacing for member in members if member.pixel_spacing]
    if any(not np.allclose(spacing, spacings[0], rtol=PIXEL_SPACING_TOLERANCE, atol=0) for spacing in spacings[1:]):
        # Stacked pixel for pixel, images at two scales would show the model's channels the anatomy at two sizes.
        raise InvalidDicomImageError(
            f"frames at one slice position must have the same Pixel Spacing; got {sorted(set(spacings))} (mm) at "
            f"{position}"
        )
