"""Series assembly: DICOM frames of one request grouped into model inputs, intensities normalised per series.

`plan_series` checks every file's header (`app.dicom.dicom_header.read_dicom_header`), chooses the series the models
read (`app.series_choice.choose_series`: FLAIR, and pre- and post-contrast T1 mapped by their attributes), counts the
slices the chosen frames will make and the memory decoding them will take, all before any pixel is decoded (the last
three are `plan_headers`, which the DICOM node's studies also go through before their files are read); `decode_series`
then decodes the chosen files, and `prepare_inputs` normalises the frames of each series to uint8 (`normalise_volume`)
and groups frames that lie at the same position into one model input (`SliceInput`): alone it is FLAIR, three together
are pre-contrast, FLAIR, post-contrast in the order the choice gives. The service's path is `plan_series` ->
`decode_series` (`app.prediction.PredictionService.predict_dicom`), with the request's limits. No HTTP here.
"""

from __future__ import annotations

import itertools
import math
import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np

from app.core.preprocessing import CHANNEL_ORDER, FLAIR_CHANNEL, INPUT_SHAPE
from app.dicom.dicom_frame import DicomFrame, frame_placement
from app.dicom.dicom_header import DicomHeader, read_dicom_header
from app.dicom.dicom_input import decode_dicom
from app.dicom.slice_orientation import InPlaneTurn, in_plane_turn
from app.dicom.square_pixels import SquarePixels, pixel_aspect, square_pixels
from app.errors import InvalidDicomImageError, ServiceError, TooManySlicesError
from app.intensity_range import stretch_in_place, stretch_range
from app.memory_budget import HeaderClaim, check_cost, mask_bytes
from app.sequence_rules import SelectionRules
from app.series_choice import T1_ROLES, SeriesChoice, choose_series
from app.uploads import UploadLimits, check_request_cost, check_upload_size, model_input, request_file

if TYPE_CHECKING:
    from app.inference import SlicePrediction

# Positions closer than this (mm) are the same slice: scanners write positions with rounding noise.
POSITION_TOLERANCE_MM = 0.01
# Direction cosines closer than this are the same plane (rounding noise in Image Orientation (Patient)).
SAME_PLANE_TOLERANCE = 1e-3
# Pixel spacings of the frames stacked into one slice may differ by this share (rounding in Pixel Spacing).
PIXEL_SPACING_TOLERANCE = 0.01


@dataclass(frozen=True, eq=False)
class SliceInput:
    """One model input made of DICOM frames at the same position.

    Attributes
    ----------
    image
        uint8 HxW (one frame, taken as FLAIR) or HxWx3 (pre-contrast, FLAIR, post-contrast).
    channels
        The frames the image was made of: one, or three as `CHANNEL_ORDER`.
    """

    image: np.ndarray
    channels: tuple[DicomFrame, ...]

    @property
    def reference(self) -> DicomFrame:
        """The FLAIR frame: the one a DICOM SEG frame refers to (the models segment the FLAIR abnormality)."""
        return self.channels[0] if len(self.channels) == 1 else self.channels[FLAIR_CHANNEL]


@dataclass
class SeriesUploads:
    """The slices of the DICOM files that could be read, the errors of those that could not (by position), and the
    series they were read from (`choice`)."""

    inputs: list[SliceInput]
    file_errors: dict[int, ServiceError] = field(default_factory=dict)
    choice: SeriesChoice = field(default_factory=SeriesChoice)


@dataclass(frozen=True, eq=False)
class SeriesPlan:
    """A request's DICOM files after their headers were checked: each file's header or its refusal, in place, the
    series chosen for the models, the slices their frames will make, and what decoding them will cost."""

    headers: list[DicomHeader | ServiceError]
    slices: int
    cost_bytes: int
    choice: SeriesChoice = field(default_factory=SeriesChoice)
    copies: dict[int, tuple[int, DicomHeader]] = field(default_factory=dict)
    """Files left out as copies of a file read (`leave_out_copies_of_read_files`): index -> (the original's index,
    the copy's header), read instead when the original does not decode."""

    @property
    def file_errors(self) -> dict[int, ServiceError]:
        return {index: item for index, item in enumerate(self.headers) if isinstance(item, ServiceError)}

    @property
    def header_bytes(self) -> int:
        """The part of `cost_bytes` the parsed headers hold already (counted in `app.memory_budget.HeaderMemory`
        while they were read); the rest is what decoding will take."""
        return held_header_bytes(self.headers) + sum(header.header_bytes for _, header in self.copies.values())


def held_header_bytes(headers: Sequence[DicomHeader | ServiceError]) -> int:
    """What the parsed headers among `headers` hold until the answer (`DicomHeader.header_bytes`)."""
    return sum(item.header_bytes for item in headers if isinstance(item, DicomHeader))


def too_many_slices(slices: int, max_slices: int) -> ServiceError:
    """The refusal of a series with more slices than the inference queue could ever hold (`slices` may be a lower
    bound: `count_slices` stops counting past the limit)."""
    return TooManySlicesError(
        f"a request may hold at most {max_slices} slices (INFERENCE_QUEUE_SLICES); got {slices} or more, counted "
        "from the DICOM headers"
    )


class HeadersNotRead(Exception):
    """`read_headers` stopped: its caller no longer wants the answer."""


def read_headers(
    uploads: Sequence[bytes | ServiceError],
    limits: UploadLimits,
    stop: threading.Event | None = None,
    claim: HeaderClaim | None = None,
) -> list[DicomHeader | ServiceError]:
    """Each file's checked header (`read_dicom_header`), or the error that refuses it, in request order; each
    header's bytes are added to `claim` (the requests in flight together, `app.memory_budget.HeaderMemory`) as it is
    read.

    Raises
    ------
    app.errors.OverMemoryBudgetError
        As soon as the headers read hold more than `limits.max_decode_bytes` (`DicomHeader.header_bytes`): files of
        many tiny elements, each under `MAX_HEADER_READS`, added up to +1.78 GiB in one 22 MB request (attack review
        32). The rest is not read.
    app.errors.OverloadedError
        When `claim` cannot hold a header's bytes beside those of the other requests in flight.
    HeadersNotRead
        Once `stop` is set (the request's client has gone): the rest is not read. Reading on took a core for another
        27 s after a client left a heavy request (attack review 32).
    """
    headers: list[DicomHeader | ServiceError] = []
    held = 0
    for data in uploads:
        if stop is not None and stop.is_set():
            raise HeadersNotRead(f"stopped after {len(headers)} of {len(uploads)} files")
        if isinstance(data, ServiceError):
            headers.append(data)
            continue
        try:
            check_upload_size(len(data), limits)
            header = read_dicom_header(data, limits.max_dicom_pixels, limits.max_decode_bytes)
        except ServiceError as error:
            headers.append(error)
            continue
        headers.append(header)
        held += header.header_bytes
        if limits.max_decode_bytes is not None:
            check_cost(
                f"the headers of this request's first {len(headers)} files",
                held,
                f"{sum(item.header_reads for item in headers if isinstance(item, DicomHeader))} reads of their data "
                "elements, held until the answer",
                limits.max_decode_bytes,
            )
        if claim is not None:
            claim.add(header.header_bytes)
    return headers


def plan_series(
    uploads: Sequence[bytes | ServiceError],
    limits: UploadLimits,
    max_slices: int | None = None,
    refuse_slices: Callable[[int, int], ServiceError] = too_many_slices,
    rules: SelectionRules | None = None,
    stop: threading.Event | None = None,
    claim: HeaderClaim | None = None,
) -> SeriesPlan:
    """Read and check the headers of every DICOM file (`read_headers`, until `stop`, counted in `claim`), then
    choose the series, count the slices and the decoding cost (`plan_headers`); nothing is decoded.

    Raises
    ------
    ServiceError
        As `plan_headers`.
    """
    return plan_headers(read_headers(uploads, limits, stop, claim), limits, max_slices, refuse_slices, rules)


def plan_headers(
    headers: list[DicomHeader | ServiceError],
    limits: UploadLimits,
    max_slices: int | None = None,
    refuse_slices: Callable[[int, int], ServiceError] = too_many_slices,
    rules: SelectionRules | None = None,
) -> SeriesPlan:
    """Choose the series of checked headers, count the slices and the decoding cost; nothing is decoded, and only the
    headers' data sets and sizes are read, never `DicomHeader.data`.

    Order: the series the models read (`choose_series` with `rules`; files of other series are left out of
    everything that follows), the slices of the chosen files against `max_slices` (default
    `limits.max_request_slices`), each file's cost, an error in place of a file with the SOP Instance UID of an
    earlier one, then the request's cost against `limits.max_decode_bytes` (its files are held together, as one
    series, and decode one after another: what each keeps, and the largest one's working copies; then a mask per
    slice, `mask_bytes`).

    Parameters
    ----------
    headers
        Each file's header, or its error, in request order (`read_headers`). A file refused here gets its error in
        its place in this list.

    Raises
    ------
    ServiceError
        `app.errors.NoFlairSeriesError` when no series can be read as FLAIR; `refuse_slices(slices, max_slices)`
        (default `TooManySlicesError`) for too many slices; `app.errors.OverMemoryBudgetError` for a request over
        the budget.
    """
    max_slices = limits.max_request_slices if max_slices is None else max_slices
    choice = choose_series(headers, rules)
    used = choice.used_files
    copies = leave_out_copies_of_read_files(headers, used)
    used = used - {index for index, item in enumerate(headers) if isinstance(item, ServiceError)}
    chosen = [item for index, item in enumerate(headers) if isinstance(item, DicomHeader) and index in used]
    slices = count_slices(chosen, at_most=max_slices)
    if max_slices is not None and slices > max_slices:
        raise refuse_slices(slices, max_slices)
    for index, item in enumerate(headers):
        if isinstance(item, DicomHeader) and index in used and limits.max_decode_bytes is not None:
            try:
                item.check_cost(limits.max_decode_bytes)
            except ServiceError as error:
                headers[index] = error
    refuse_repeated_instances(headers, used)  # after each file's own checks: a file refused by itself keeps its reason
    readable = [item for index, item in enumerate(headers) if isinstance(item, DicomHeader) and index in used]
    # The files decode one after another: each keeps its part, and the largest one's working copies come on top;
    # then every slice gets a mask at the size of its frames.
    cost = sum(item.kept_bytes for item in readable) + max((item.working_bytes for item in readable), default=0)
    cost += mask_bytes([max((item.rows * item.columns for item in readable), default=0)] * slices)
    cost += held_header_bytes(headers)  # every header read is held until the answer
    cost += sum(header.header_bytes for _, header in copies.values())  # the copies' too, in case they are read
    check_request_cost(cost, len(readable), limits)
    return SeriesPlan(headers, slices, cost, choice, copies)


def leave_out_copies_of_read_files(
    headers: list[DicomHeader | ServiceError], used: Collection[int]
) -> dict[int, tuple[int, DicomHeader]]:
    """Put an error in place of each used file that is a copy of another used file: it names that file in its
    Source Image Sequence, directly or through other copies (A <- B <- C), and lies where it lies in its series.
    The original is read instead.

    A slice sent again after lossy compression must have a new SOP Instance UID (PS3.3 C.7.6.1.1.5) and names its
    original there: a PACS that archived a series lossy and forwards it beside the original gives two files at each
    slice position, and the request was refused (interop review 35). The original is the better copy. Files that name
    one another in a loop are none's copy: both stay, and the slice is refused as sent twice (review 36b: which was
    left out depended on the order the files came in). Returns each copy's index -> (its original's, its header)."""
    index_of = {
        str(header.dataset.get("SOPInstanceUID", "") or ""): index
        for index, header in enumerate(headers)
        if isinstance(header, DicomHeader) and index in used
    }
    names: dict[int, set[int]] = {}  # file -> the used files of its series and place it names
    for index, header in enumerate(headers):
        if not isinstance(header, DicomHeader) or index not in used:
            continue
        for item in header.dataset.get("SourceImageSequence") or []:
            original = index_of.get(str(item.get("ReferencedSOPInstanceUID", "") or ""))
            other = headers[original] if original is not None and original != index else None
            if (
                isinstance(other, DicomHeader)
                and other.dataset.get("SeriesInstanceUID") == header.dataset.get("SeriesInstanceUID")
                and _same_place(header, other)
            ):
                names.setdefault(index, set()).add(original)
    copies: dict[int, tuple[int, DicomHeader]] = {}
    for index, named in names.items():
        reached = _reached(named, names)
        if index in reached:
            continue  # in a loop: no file of it is the original
        roots = reached - set(names)  # files that name no other: the originals
        original = min(roots or reached)
        copies[index] = (original, headers[index])  # a DicomHeader: only those name files here
        headers[index] = InvalidDicomImageError(
            f"the file is a copy of {request_file(original)}, which it names in its Source Image Sequence (as a "
            "slice sent again after lossy compression does): the original is read, not the copy"
        )
    return copies


def _reached(start: set[int], names: Mapping[int, set[int]]) -> set[int]:
    """The files `start` leads to through `names` (start included)."""
    reached, todo = set(start), list(start)
    while todo:
        for named in names.get(todo.pop(), ()):
            if named not in reached:
                reached.add(named)
                todo.append(named)
    return reached


def _same_place(first: DicomHeader, second: DicomHeader) -> bool:
    """Whether two single-frame files lie at one slice position (or neither says where): a copy lies where its
    original does, while a derived image elsewhere in the series that names a source is a slice of its own."""
    if first.frames != 1 or second.frames != 1:
        return False
    try:
        place, other = frame_placement(first.dataset, 0), frame_placement(second.dataset, 0)
    except ServiceError:
        return False
    if place[1] is None or other[1] is None:
        return place[1] is None and other[1] is None
    return place[0] == other[0] and _close(place[1], other[1], POSITION_TOLERANCE_MM)


def refuse_repeated_instances(headers: list[DicomHeader | ServiceError], used: Collection[int]) -> None:
    """Put an error in place of each used file whose SOP Instance UID an earlier used file has: answers, a SEG and an
    SR name slices by it, so two files under one would be two slices of one instance. The first is read; the UID is
    not quoted (it is the file's content)."""
    first: dict[str, int] = {}
    for index, header in enumerate(headers):
        if not isinstance(header, DicomHeader) or index not in used:
            continue
        uid = str(header.dataset.get("SOPInstanceUID", "") or "")
        if uid and uid in first:
            headers[index] = InvalidDicomImageError(
                f"the file has the SOP Instance UID of {request_file(first[uid])}; a UID names one instance, "
                "which is read once"
            )
        first.setdefault(uid, index)


def count_slices(headers: Sequence[DicomHeader], at_most: int | None = None) -> int:
    """The slices the frames of `headers` make under `prepare_inputs`'s grouping, from the headers alone.

    Frames of one series never share a slice, so then every frame is one; otherwise frames at one place are one.
    Once the count is past `at_most` it stops: the number returned is then only known to be larger than `at_most`.
    """
    frames = sum(header.frames for header in headers)
    series = {str(header.dataset.get("SeriesInstanceUID", "")) for header in headers}
    if len(series) <= 1 or (at_most is not None and -(-frames // 3) > at_most):
        return frames if len(series) <= 1 else -(-frames // 3)
    places = SlicePlaces()
    for header in headers:
        for index in range(header.frames):
            places.place(*frame_placement(header.dataset, index))
            if at_most is not None and places.count > at_most:
                return places.count
    return places.count


def decode_series(plan: SeriesPlan) -> SeriesUploads:
    """Decode the chosen files of a checked plan and group their frames into slices (CPU work: call it off the event
    loop).

    A file that fails is reported in `file_errors` and left out. When the T1 frames do not pair with FLAIR's (a
    position without all three, see `prepare_inputs`), or when a T1 series is blank (one value in every pixel of
    two or more frames), FLAIR is read alone and the choice says so; a blank FLAIR series fails the request (its
    answer would read as "no tumor"), as do other frames that cannot be grouped, since no slice order could be
    trusted then.
    """
    decoded: dict[int, list[DicomFrame]] = {}
    errors: dict[int, ServiceError] = {}
    used = plan.choice.used_files
    for position, header in enumerate(plan.headers):
        if isinstance(header, ServiceError):
            errors[position] = header
            continue
        if position not in used:
            continue
        try:
            decoded[position] = decode_dicom(header)
        except ServiceError as error:
            errors[position] = error
    # An original that does not decode: its copy, left out for it, is read in its place (review 36b: the slice was
    # lost, and the copy's reason said the original was read).
    for position, (original, header) in sorted(plan.copies.items()):
        if original in errors and original not in decoded and not isinstance(plan.headers[original], ServiceError):
            try:
                decoded[original] = decode_dicom(header)
            except ServiceError:
                continue
            errors.pop(position, None)
    frames = [frame for position in sorted(decoded) for frame in decoded[position]]
    choice = plan.choice
    if not frames:
        return SeriesUploads([], errors, choice)
    blank = _blank_series(frames)
    flair = choice.flair
    if blank and (flair is None or flair.series_instance_uid in blank):
        raise InvalidDicomImageError(
            "the FLAIR series holds one value in every pixel of all its frames: a blank series has no image to analyse "
            "(an answer would read as no tumor)"
        )
    if blank:  # a blank T1 series: FLAIR alone, as the models accept
        choice = choice.flair_alone("a T1 series holds one value in every pixel of all its frames (blank)")
        frames = [frame for frame in frames if frame.series_instance_uid == flair.series_instance_uid]
    unreadable = _unreadable_t1_reason(choice, errors)
    if unreadable is not None and flair is not None:
        choice = choice.flair_alone(f"none of a T1 series' files could be read ({unreadable})")
        frames = [frame for frame in frames if frame.series_instance_uid == flair.series_instance_uid]
    try:
        return SeriesUploads(prepare_inputs(frames, choice.channel_series), errors, choice)
    except InvalidDicomImageError as error:
        flair = choice.flair
        if len(choice.used) != 3 or flair is None:
            raise
        choice = choice.flair_alone(f"their slices do not pair with FLAIR's ({error.message})")
        flair_frames = [frame for frame in frames if frame.series_instance_uid == flair.series_instance_uid]
        return SeriesUploads(prepare_inputs(flair_frames, choice.channel_series), errors, choice)


def _unreadable_t1_reason(choice: SeriesChoice, errors: Mapping[int, ServiceError]) -> str | None:
    """The reason the first file of a T1 series in use failed, when every one of its files did; else None. Said in
    the note, where a pairing failure would blame the slices' geometry (interop review 35: T1 series in 12-bit
    JPEG Extended, which no decoder here reads)."""
    for use in choice.used:
        if use.role in T1_ROLES and use.files and all(position in errors for position in use.files):
            return errors[use.files[0]].message
    return None


def _blank_series(frames: Sequence[DicomFrame]) -> set[str]:
    """The series of two or more frames that hold one value in every pixel. One blank frame alone is answered (a
    slice above the head is black); a whole blank series is no image."""
    by_series: dict[str, list[DicomFrame]] = {}
    for frame in frames:
        by_series.setdefault(frame.series_instance_uid, []).append(frame)
    return {
        uid
        for uid, items in by_series.items()
        if len(items) > 1
        and min(float(np.min(item.values)) for item in items) == max(float(np.max(item.values)) for item in items)
    }


def non_square_pixels_note(frames: Sequence[DicomFrame]) -> str | None:
    """A note for the answer when the slices' pixels are not square (Pixel Spacing rows != columns), else None.

    Such slices are resampled to square pixels for the models (`app.dicom.square_pixels`) and their masks mapped
    back, which the answer says (a mask drawn on a resampled slice is interpolated along one axis); a slice too far
    from square to resample is read pixel for pixel, and the note says the masks may be less accurate. Says the
    ratio, not the file's values."""
    aspects = [(frame, pixel_aspect(frame.pixel_spacing)) for frame in frames]
    off = [(frame, aspect) for frame, aspect in aspects if aspect != 1.0]
    if not off:
        return None
    aspect = max((aspect for _, aspect in off), key=lambda aspect: abs(math.log(aspect)))
    shape = f"{aspect:.2f} times as tall as wide" if aspect > 1 else f"{1 / aspect:.2f} times as wide as tall"
    if all(not square_pixels(frame.values.shape, frame.pixel_spacing).is_identity for frame, _ in off):
        return (
            f"the slices' pixels are not square (each {shape}): the models, which learned square pixels, read them "
            "resampled to square pixels, and the masks were mapped back to the stored pixels"
        )
    return (
        f"the slices' pixels are not square (each {shape}) and too far from square to resample: the models read "
        "them pixel for pixel, as they learned square pixels, so the anatomy looks distorted to them and the masks "
        "may be less accurate"
    )


def model_inputs(inputs: Sequence[SliceInput]) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """The model batch (`app.uploads.model_input`, as for raster uploads) and the size of each slice, each slice
    resampled to square pixels (`app.dicom.square_pixels`) and each axial slice turned in-plane to the orientation the
    models learned (`app.dicom.slice_orientation`); `in_stored_orientation` maps the answers' masks back."""
    batch = np.empty((len(inputs), *INPUT_SHAPE), dtype=np.float32)  # filled in place: no second copy of the batch
    sizes = []
    for index, item in enumerate(inputs):
        resampling, turn = _model_view(item)
        image = turn.apply(resampling.apply(item.image))
        batch[index] = model_input(image)
        sizes.append((int(image.shape[0]), int(image.shape[1])))
    return batch, sizes


def in_stored_orientation(
    predictions: Sequence[SlicePrediction], inputs: Sequence[SliceInput]
) -> list[SlicePrediction]:
    """The models' answers for `model_inputs(inputs)` with each mask turned back and resampled back to its slice's
    stored pixels."""
    answers = []
    for prediction, item in zip(predictions, inputs, strict=True):
        resampling, turn = _model_view(item)
        if prediction.mask is not None and not (turn.is_identity and resampling.is_identity):
            prediction = replace(prediction, mask=resampling.undo(turn.undo(prediction.mask)))
        answers.append(prediction)
    return answers


def _model_view(item: SliceInput) -> tuple[SquarePixels, InPlaneTurn]:
    """How `item` is shown to the models: resampled to square pixels first (in the stored pixel order, where Pixel
    Spacing's rows and columns are), then turned."""
    reference = item.reference
    return square_pixels(item.image.shape, reference.pixel_spacing), in_plane_turn(reference.image_orientation)


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
    `app.series_choice.choose_series`), or as the frames were given when it is empty. Any other count is refused,
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
        plane and one rows x columns (`_check_volume`).
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
    """The slices of a series are one volume: one plane and one matrix. Otherwise the series clean-up would join
    masks of slices that do not lie one above the other, and the volume would add up areas of different planes."""
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


def _check_channels(members: Sequence[DicomFrame], channel_series: Sequence[str]) -> None:
    """Three chosen series: every slice holds one frame of each (else the T1 slices do not pair with FLAIR's)."""
    found = sorted(member.series_instance_uid for member in members)
    if found != sorted(channel_series):
        position = members[0].image_position
        raise InvalidDicomImageError(
            f"a slice of three series needs one frame of each ({', '.join(CHANNEL_ORDER)}); got {len(members)} "
            f"frame(s) from {len(set(found))} of them at position {position}"
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


ECHO_AND_ACQUISITION_ATTRIBUTES = ("EchoNumbers", "EchoTime", "AcquisitionNumber", "TemporalPositionIdentifier")


def _attributes_that_tell_apart(members: Sequence[DicomFrame]) -> str:
    """The names of the echo and acquisition attributes whose values differ between `members` ("" if none do).
    Names only: the values are the files' content."""
    differing = [
        name
        for name in ECHO_AND_ACQUISITION_ATTRIBUTES
        if len({str(member.header.get(name, "")) for member in members}) > 1
    ]
    return " and ".join(differing)


def _copies_of_one_another(members: Sequence[DicomFrame]) -> bool:
    """Whether one of `members` names another as its source (Source Image Sequence): a lossy-compressed copy must
    have a new SOP Instance UID (PS3.3 C.7.6.1.1.5) and names its original there."""
    present = {member.sop_instance_uid for member in members}
    for member in members:
        sources = member.header.get("SourceImageSequence") or []
        named = {str(item.get("ReferencedSOPInstanceUID", "")) for item in sources}
        if named & (present - {member.sop_instance_uid}):
            return True
    return False


def _check_group(members: tuple[DicomFrame, ...]) -> None:
    position = members[0].image_position
    series = {member.series_instance_uid for member in members}
    if len(members) > 1 and len(series) == 1:
        files = {member.sop_instance_uid for member in members}
        frames = {(member.sop_instance_uid, member.frame_number) for member in members}
        if len(frames) < len(members):
            where = "the same instance (SOP Instance UID) sent more than once"
        elif len(files) == 1:
            where = (
                "one multi-frame file that gives no position per frame (a cine, or a stack without its Plane Position "
                "per frame)"
            )
        elif _copies_of_one_another(members):  # before echoes: a copy may store them otherwise (review 36b)
            raise InvalidDicomImageError(
                f"{len(members)} frames lie at one slice position {position}: the same slice arrived more than once "
                "under different SOP Instance UIDs (one names another in its Source Image Sequence: the series sent "
                "again after lossy compression, say); send one copy of the series"
            )
        elif told_apart := _attributes_that_tell_apart(members):
            # A multi-echo (PD/T2) or repeated acquisition: the files are one per image, but the models read one
            # image per position, and which one is FLAIR is not for the service to guess.
            raise InvalidDicomImageError(
                f"{len(members)} files of one series lie at each slice position (first at {position}), told apart by "
                f"{told_apart}: the series holds several echoes or acquisitions, and the models read one image per "
                "slice position; send the files of one echo and one acquisition (the FLAIR ones) only"
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
