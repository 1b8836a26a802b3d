"""A request's DICOM files read into one series, within its limits: headers checked, the series chosen, files decoded.

`plan_series` checks every file's header (`app.dicom.dicom_header.read_dicom_header`), chooses the series the models
read (`app.series.choice.choose_series`: FLAIR, and pre- and post-contrast T1 mapped by their attributes), counts the
slices the chosen frames will make and the memory decoding them will take, all before any pixel is decoded (the last
three are `plan_headers`, which the DICOM node's studies also go through before their files are read); `decode_series`
then decodes the chosen files and groups their frames into model inputs (`app.dicom.dicom_series.prepare_inputs`).
The service's path is `plan_series` -> `decode_series` (`app.prediction.PredictionService.predict_dicom`), with the
request's limits. Here the request's limits and the series choice meet the DICOM objects; `app.dicom` itself knows
neither. No HTTP here.
"""

from __future__ import annotations

import hashlib
import threading
from collections import Counter
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from app.dicom.dicom_frame import (
    DicomFrame,
    frame_placement,
    offsets_along_normal,
    source_instance_uids,
)
from app.dicom.dicom_header import DicomHeader, garbled_values_refused, read_dicom_header
from app.dicom.dicom_input import decode_dicom
from app.dicom.dicom_series import POSITION_TOLERANCE_MM, SliceInput, SlicePlaces, prepare_inputs
from app.errors import InvalidDicomImageError, ServiceError, TooManySlicesError
from app.memory_budget import HeaderClaim, check_cost, mask_bytes
from app.series.choice import T1_ROLES, SeriesChoice, SeriesUse, choose_series
from app.series.info import where_in_study
from app.series.rejection_notes import apply_rejection_notes, withdrawn_by_series
from app.series.sequence_rules import SelectionRules
from app.series.t1_on_flair_grid import stored_otherwise_note, t1_frames_in_flair_layout, turned_note
from app.uploads import UploadLimits, check_request_cost, check_upload_size, request_file


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
    """Files left out as copies of a file read (`copies_of_read_files`): index -> (the original's index, the copy's
    header), read instead when the original does not decode."""

    @property
    def file_errors(self) -> dict[int, ServiceError]:
        return {index: item for index, item in enumerate(self.headers) if isinstance(item, ServiceError)}

    @property
    def header_bytes(self) -> int:
        """The part of `cost_bytes` the parsed headers hold already (counted in `app.memory_budget.HeaderMemory`
        while they were read); the rest is what decoding will take."""
        return held_header_bytes(self.headers)


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
        many tiny elements, each under `MAX_HEADER_READS`, can add up to +1.78 GiB in one 22 MB request. The rest is
        not read.
    app.errors.OverloadedError
        When `claim` cannot hold a header's bytes beside those of the other requests in flight.
    HeadersNotRead
        Once `stop` is set (the request's client has gone): the rest is not read. Reading on would take a core for
        another 27 s after a client left a heavy request.
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
    """Read and check the headers of every DICOM file (`read_headers`, until `stop`, counted in `claim`), leave out
    the images the request's IHE IOCM rejection notes withdraw (`apply_rejection_notes`), then choose the series,
    count the slices and the decoding cost (`plan_headers`); nothing is decoded.

    Raises
    ------
    ServiceError
        As `plan_headers`.
    """
    headers = apply_rejection_notes(uploads, read_headers(uploads, limits, stop, claim), stop)
    return plan_headers(headers, limits, max_slices, refuse_slices, rules)


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
    `limits.max_request_slices`; copies of files read not counted), each file's cost, an error in place of a file
    with the SOP Instance UID of an earlier one, the copies of the files still read left out, then the request's
    cost against `limits.max_decode_bytes` (its files are held together, as one series, and decode one after
    another: what each keeps, and the largest one's working copies; then a mask per slice, `mask_bytes`).

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
    series_choice = choose_series(headers, rules)
    # The slices first, before any file's cost (a frame bomb is too many slices), without the copies of files read,
    # and a series sent again under new UIDs counted once (counting both copies, a 176-slice study sent twice is
    # over the budget and its results withdrawn).
    choice, _ = _without_copies(headers, series_choice)
    repeats = resent_files_by_header(headers, choice.used_files)
    series_choice, choice = series_choice.without_repeats(repeats), choice.without_repeats(repeats)
    slices = count_slices(_readable(headers, choice), at_most=max_slices)
    if max_slices is not None and slices > max_slices:
        raise refuse_slices(slices, max_slices)
    for index, item in enumerate(headers):
        if isinstance(item, DicomHeader) and index in series_choice.used_files and limits.max_decode_bytes is not None:
            try:
                item.check_cost(limits.max_decode_bytes)
            except ServiceError as error:
                headers[index] = error
    # After each file's own checks: a file refused by itself keeps its reason.
    refuse_duplicate_sop_instance_uids(headers, series_choice.used_files)
    # Then the copies again, of the files still read: a copy of a file refused is read in its place (otherwise,
    # left out for an original refused as a repeated instance, the slice is lost).
    choice, copies = _without_copies(headers, series_choice)
    readable = _readable(headers, choice)
    slices = count_slices(readable)
    # The files decode one after another: each keeps its part, and the largest one's working copies come on top;
    # then every slice gets a mask at the size the models saw it: a slice of non-square pixels is resampled to its
    # long side squared at most (`app.dicom.square_pixels`: 4096 x 512 slices of 8:1 pixels take 15 MB a slice),
    # so every mask is counted at that bound.
    cost = sum(item.kept_bytes for item in readable) + max((item.working_bytes for item in readable), default=0)
    cost += mask_bytes([max((max(item.rows, item.columns) ** 2 for item in readable), default=0)] * slices)
    cost += held_header_bytes(headers)  # every header read is held until the answer, the copies' too
    check_request_cost(cost, len(readable), limits)
    return SeriesPlan(headers, slices, cost, choice, copies)


def _without_copies(
    headers: Sequence[DicomHeader | ServiceError], choice: SeriesChoice
) -> tuple[SeriesChoice, dict[int, tuple[int, DicomHeader]]]:
    """`choice` with the copies of files it reads left out, and those copies (`copies_of_read_files`)."""
    copies = copies_of_read_files(headers, choice.used_files)
    return choice.without_copies({index: original for index, (original, _) in copies.items()}), copies


DECODING_KEYWORDS = (
    "SeriesInstanceUID",
    "FrameOfReferenceUID",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "PixelSpacing",
    "NumberOfFrames",
    "Rows",
    "Columns",
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "RescaleSlope",
    "RescaleIntercept",
    "PixelPaddingValue",
    "PixelPaddingRangeLimit",
    "PlanarConfiguration",
    "ModalityLUTSequence",
    "SharedFunctionalGroupsSequence",
    "PerFrameFunctionalGroupsSequence",
)
"""What, besides the pixel data's bytes, decides what a file's frames decode to and where they lie."""


def resent_files_by_header(headers: Sequence[DicomHeader | ServiceError], used: Collection[int]) -> dict[int, int]:
    """The used files that repeat another used file, found before anything is counted or decoded: the same series,
    place and decoding attributes (`DECODING_KEYWORDS`), the same transfer syntax and the very bytes of pixel data,
    under another SOP Instance UID (a series sent again after a re-import). Repeat -> the file read, the one whose
    SOP Instance UID sorts first. Only files that share all but the pixel data are hashed (for a header read from
    disk, the file is read then). Copies in another transfer syntax are found once decoded
    (`resent_files_by_pixels`)."""
    groups: dict[tuple[str, ...], list[int]] = {}
    for index in sorted(used):
        header = headers[index]
        if not isinstance(header, DicomHeader) or not _placed(header):
            continue  # without a place (a Secondary Capture), two identical slices are two slices
        try:
            with garbled_values_refused():
                syntax = str(getattr(header.dataset, "file_meta", {}).get("TransferSyntaxUID", ""))
                key = (syntax, *(_text(header.dataset.get(keyword)) for keyword in DECODING_KEYWORDS))
        except ServiceError:
            continue  # a value that cannot be read: the file's decoding refuses it alone
        groups.setdefault(key, []).append(index)
    repeats: dict[int, int] = {}
    for members in (group for group in groups.values() if len(group) > 1):
        by_digest: dict[bytes, list[int]] = {}
        for index in members:
            header = headers[index]
            if isinstance(header, DicomHeader) and (digest := header.pixel_data_digest()) is not None:
                by_digest.setdefault(digest, []).append(index)
        for same in by_digest.values():
            uids = {index: _sop_instance_uid(headers[index]) for index in same}
            read = min(same, key=lambda index: uids[index])
            repeats.update({index: read for index in same if uids[index] != uids[read]})
    return repeats


def _placed(header: DicomHeader) -> bool:
    """Whether a file says where its frames lie: a position at its top level, or per frame."""
    dataset = header.dataset
    return bool(dataset.get("ImagePositionPatient")) or "PerFrameFunctionalGroupsSequence" in dataset


def _text(value: object) -> str:
    """A value as text, whole: a sequence with every item's every value (pydicom's own text of a sequence cuts long
    arrays to "Array of N elements", so two Modality LUTs of other data would read alike), bytes by digest."""
    if isinstance(value, DicomSequence):
        return "[" + "; ".join(_dataset_text(item) for item in value) + "]"
    if isinstance(value, bytes):
        return hashlib.sha256(value).hexdigest()
    return repr(value)


def _dataset_text(dataset: Dataset) -> str:
    return ", ".join(f"{element.tag}={_text(element.value)}" for element in dataset)


def _sop_instance_uid(header: DicomHeader | ServiceError) -> str:
    return str(header.dataset.get("SOPInstanceUID", "")) if isinstance(header, DicomHeader) else ""


def _readable(headers: Sequence[DicomHeader | ServiceError], choice: SeriesChoice) -> list[DicomHeader]:
    """The headers of the files `choice` reads that are not refused."""
    return [item for index, item in enumerate(headers) if isinstance(item, DicomHeader) and index in choice.used_files]


def copies_of_read_files(
    headers: Sequence[DicomHeader | ServiceError], used: Collection[int]
) -> dict[int, tuple[int, DicomHeader]]:
    """The used files that are copies of another used file: each names that file in its Source Image Sequence,
    directly or through other copies (A <- B <- C), and lies where it lies in its series (every frame). The flow
    leaves them out (`SeriesChoice.without_copies`) and reads the originals.

    A slice sent again after lossy compression must have a new SOP Instance UID (PS3.3 C.7.6.1.1.5) and names its
    original there: a PACS that archived a series lossy and forwards it beside the original gives two files at each
    slice position, which would refuse the request. The original is the better copy. Files that name one another in
    a loop are none's copy: both stay, and the slice is refused as sent twice (rather than one left out by the order
    the files came in). Returns each copy's index -> (its original's, its header)."""
    index_of = {
        uid: index
        for index, header in enumerate(headers)
        if isinstance(header, DicomHeader)
        and index in used
        and (uid := str(header.dataset.get("SOPInstanceUID", "") or ""))
    }
    names: dict[int, set[int]] = {}  # file -> the used files of its series and place it names
    for index, header in enumerate(headers):
        if not isinstance(header, DicomHeader) or index not in used:
            continue
        for uid in source_instance_uids(header.dataset):
            original = index_of.get(uid)
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
        header = headers[index]
        if isinstance(header, DicomHeader):  # always: only headers name files here
            copies[index] = (original, header)
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
    """Whether two files lie where each other lies, frame by frame (or neither says where): a copy lies where its
    original does, while a derived image elsewhere in the series that names a source is a slice of its own. A
    multi-frame object (a 3D FLAIR archived as one Enhanced MR) and its copy too, so the pair is not refused."""
    if first.frames != second.frames:
        return False
    try:
        places = [(frame_placement(first.dataset, i), frame_placement(second.dataset, i)) for i in range(first.frames)]
    except ServiceError:
        return False
    return all(_same_position(place, other) for place, other in places)


def _same_position(place: tuple, other: tuple) -> bool:
    """Two `frame_placement`s: one Frame of Reference and positions within `POSITION_TOLERANCE_MM`, or no position
    for either."""
    if place[1] is None or other[1] is None:
        return place[1] is None and other[1] is None
    return place[0] == other[0] and all(
        abs(a - b) <= POSITION_TOLERANCE_MM for a, b in zip(place[1], other[1], strict=True)
    )


def refuse_duplicate_sop_instance_uids(headers: list[DicomHeader | ServiceError], used: Collection[int]) -> None:
    """Put an error in place of each used file whose SOP Instance UID an earlier used file has: answers, a SEG and an
    SR name slices by it, so two files under one would be two slices of one instance. The first is read; the UID is
    not quoted (it is the file's content)."""
    first: dict[str, tuple[int, Dataset]] = {}
    for index, header in enumerate(headers):
        if not isinstance(header, DicomHeader) or index not in used:
            continue
        uid = str(header.dataset.get("SOPInstanceUID", "") or "")
        if uid and uid in first:
            original = request_file(first[uid][0], where_in_study([first[uid][1]]))
            headers[index] = InvalidDicomImageError(
                f"the file has the SOP Instance UID of {original}; a UID names one instance, which is read once"
            )
        first.setdefault(uid, (index, header.dataset))


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
    read_from: dict[int, int] = {}  # a file decoded from its copy: its position -> the copy's
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
    # An original that does not decode: its copy, left out for it, is read in its place (otherwise the slice is
    # lost, and the copy's reason says the original was read).
    for position, (original, header) in sorted(plan.copies.items()):
        if original in errors and original not in decoded and not isinstance(plan.headers[original], ServiceError):
            try:
                decoded[original] = decode_dicom(header)
            except ServiceError:
                continue
            read_from[original] = position
            errors.pop(position, None)
    frames = [frame for position in sorted(decoded) for frame in decoded[position]]
    file_of = {frame: read_from.get(position, position) for position in decoded for frame in decoded[position]}
    del decoded  # `frames` and `file_of` hold the frames now: one replaced below is let go
    repeats = resent_files_by_pixels(frames, file_of)
    frames = [frame for frame in frames if file_of[frame] not in repeats]
    choice = plan.choice.without_repeats(repeats)
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
    paired, orphans, turned = frames, [], set()
    if len(choice.used) == 3 and flair is not None:
        for index, in_flair_layout in t1_frames_in_flair_layout(frames, flair.series_instance_uid):
            file_of[in_flair_layout] = file_of.pop(frames[index])
            frames[index] = in_flair_layout
            turned.add(in_flair_layout.series_instance_uid)
        paired, orphans = _without_t1_frames_where_flair_has_none(frames, flair.series_instance_uid)
    try:
        inputs = prepare_inputs(paired, choice.channel_series)
        if turned:
            names = [_t1_name(use) for use in choice.used if use.series_instance_uid in turned]
            choice = replace(choice, notes=(*choice.notes, turned_note(names)))
        if orphans:
            choice = replace(choice, notes=(*choice.notes, _t1_frames_left_out_note(orphans, paired, flair)))
        return SeriesUploads(_with_file_indices(inputs, file_of), errors, choice)
    except InvalidDicomImageError as error:
        flair = choice.flair
        if len(choice.used) != 3 or flair is None:
            raise
        # The cause when it is known (another Frame of Reference, turned at another spacing), else what failed.
        cause = (
            stored_otherwise_note(frames, flair.series_instance_uid)
            or _withdrawn_t1_note(choice, errors)
            or _other_pixel_spacing_note(choice, frames, flair.series_instance_uid)
        )
        choice = choice.flair_alone(cause or f"their slices do not pair with FLAIR's ({error.message})")
        flair_frames = [frame for frame in frames if frame.series_instance_uid == flair.series_instance_uid]
        inputs = prepare_inputs(flair_frames, choice.channel_series)
        return SeriesUploads(_with_file_indices(inputs, file_of), errors, choice)


def resent_files_by_pixels(frames: Sequence[DicomFrame], file_of: Mapping[DicomFrame, int]) -> dict[int, int]:
    """The files whose every frame repeats, pixel for pixel, a frame of another file of its series at the same place:
    file -> the file read in its place. A PACS that sends a series again under new SOP Instance UIDs (a re-import, a
    migration) gives two identical images at each position, which would refuse the study as having two slices there.
    At each place the frame of the file of the most frames, then of the SOP Instance UID that
    sorts first, is read, so which copy is read does not depend on the order the files came in. Most repeats are
    found before decoding (`resent_files_by_header`); these are the rest (a copy in another transfer syntax).
    Frames that differ at all, have no position or share a SOP Instance UID (one instance sent twice) are never
    repeats: they are still refused (`dicom_series.prepare_inputs`)."""
    places = SlicePlaces()
    groups: dict[tuple[str, int], list[DicomFrame]] = {}
    for frame in frames:
        if frame.image_position is not None:
            place = places.place(frame.frame_of_reference_uid, frame.image_position, frame.image_orientation)
            groups.setdefault((frame.series_instance_uid, place), []).append(frame)
    repeat_of: dict[DicomFrame, int] = {}
    for members in groups.values():
        # The file of the most frames first (so a single-frame copy of one frame of a multi-frame file is left out
        # whatever the UIDs' order), then the SOP Instance UID that sorts first.
        read = min(members, key=lambda frame: (-frame.number_of_frames, frame.sop_instance_uid, frame.frame_number))
        for member in members:
            if member.sop_instance_uid != read.sop_instance_uid and _same_image(member, read):
                repeat_of[member] = file_of[read]
    frames_of: dict[int, list[DicomFrame]] = {}
    for frame in frames:
        frames_of.setdefault(file_of[frame], []).append(frame)
    return {file: repeat_of[held[0]] for file, held in frames_of.items() if all(frame in repeat_of for frame in held)}


def _same_image(first: DicomFrame, second: DicomFrame) -> bool:
    return first.pixel_spacing == second.pixel_spacing and np.array_equal(first.values, second.values)


def _with_file_indices(inputs: list[SliceInput], file_of: Mapping[DicomFrame, int]) -> list[SliceInput]:
    """Each slice with the request position of the file its FLAIR frame came from, as the answer's file_errors and
    series_used number files (not the slices among themselves)."""
    return [replace(item, file_index=file_of[item.reference]) for item in inputs]


def _withdrawn_t1_note(choice: SeriesChoice, errors: Mapping[int, ServiceError]) -> str:
    """Why T1 series no longer pair with FLAIR when the request's rejection notes withdrew some of their images (a
    coordinate of the first FLAIR slice left without T1 said nothing of the withdrawal: browser review 61 F6); "" when
    they withdrew none."""
    withdrawn = Counter[str]()
    for (series_uid, _), count in withdrawn_by_series(errors.values()).items():
        if series_uid:
            withdrawn[series_uid] += count
    named = [
        f"{withdrawn[use.series_instance_uid]} of the {_t1_name(use)}"
        for use in choice.used
        if use.role in T1_ROLES and withdrawn[use.series_instance_uid]
    ]
    if not named:
        return ""
    return (
        f"the request's rejection notes withdrew T1 images ({', '.join(named)}), so the T1 series no longer hold a "
        "slice for every FLAIR slice"
    )


def _other_pixel_spacing_note(choice: SeriesChoice, frames: Sequence[DicomFrame], flair_uid: str) -> str:
    """Which T1 series lie on another pixel grid than FLAIR's, in FLAIR's layout (a T1 acquired at its own
    resolution, the most common cause): the note gave the check's tuples and a coordinate, named no series, and
    blamed the T1 series that matched (browser review 60 F8); "" when none does."""
    spacings: dict[str, set[tuple[float, ...]]] = {}
    for frame in frames:
        if frame.pixel_spacing is not None:
            spacings.setdefault(frame.series_instance_uid, set()).add(tuple(frame.pixel_spacing))
    flair = spacings.get(flair_uid, set())
    if len(flair) != 1:
        return ""
    (flair_spacing,) = flair
    other = [
        f"the {_t1_name(use)} has a pixel spacing of {_spacing_text(spacings[use.series_instance_uid])}"
        for use in choice.used
        if use.role in T1_ROLES and spacings.get(use.series_instance_uid, flair) != flair
    ]
    if not other:
        return ""
    return f"{'; '.join(other)}, FLAIR {_spacing_text(flair)}: the T1 slices must share FLAIR's pixel grid"


def _spacing_text(spacings: Collection[tuple[float, ...]]) -> str:
    """ "0.9 mm", "0.9 x 0.8 mm", or "0.9 mm and 1 mm" for a series of several."""
    shown = [f"{rows:g} mm" if rows == columns else f"{rows:g} x {columns:g} mm" for rows, columns in sorted(spacings)]
    return " and ".join(shown)


def _t1_name(use: SeriesUse) -> str:
    """A T1 series as a note names it: "pre-contrast (series 2)" (no patient data)."""
    number = "no series number" if use.series_number is None else f"series {use.series_number}"
    return f"{use.role.removeprefix('T1 ')} ({number})"


def _without_t1_frames_where_flair_has_none(
    frames: list[DicomFrame], flair_series: str
) -> tuple[list[DicomFrame], list[DicomFrame]]:
    """`frames` without the T1 frames lying where no FLAIR frame does, and those frames.

    Why: one FLAIR file missing (or unreadable) leaves its position's two T1 frames unpaired, and every slice of the
    series would be read FLAIR alone, with a note blaming the geometry. Leaving those frames out pairs every
    other position. A frame without a position is kept (it cannot be placed: pairing fails as before)."""
    places = SlicePlaces()
    placed = [
        places.place(frame.frame_of_reference_uid, frame.image_position, frame.image_orientation) for frame in frames
    ]
    flair_places = {
        place for frame, place in zip(frames, placed, strict=True) if frame.series_instance_uid == flair_series
    }
    kept, left_out = [], []
    for frame, place in zip(frames, placed, strict=True):
        if frame.series_instance_uid == flair_series or frame.image_position is None or place in flair_places:
            kept.append(frame)
        else:
            left_out.append(frame)
    return kept, left_out


def _t1_frames_left_out_note(left_out: Sequence[DicomFrame], kept: Sequence[DicomFrame], flair: SeriesUse) -> str:
    """The note on T1 frames left out where no FLAIR slice was read: beyond the FLAIR slices' ends (T1 series often
    reach further: nothing is missing), or between them (a FLAIR file missing or unreadable there, or T1 sliced
    more finely), as their positions along the slices' normal say, rather than saying every such frame is where a
    FLAIR file might be missing."""
    flair_frames = [frame for frame in kept if frame.series_instance_uid == flair.series_instance_uid]
    offsets = offsets_along_normal([*flair_frames, *left_out])

    def frames(count: int) -> str:
        return f"{count} T1 {'frame' if count == 1 else 'frames'}"

    if offsets is None or not flair_frames:
        return (
            f"{frames(len(left_out))} at positions where no FLAIR slice was read left out (beyond the FLAIR series' "
            "ends, or where a FLAIR file is missing or unreadable)"
        )
    flair_offsets, orphan_offsets = offsets[: len(flair_frames)], offsets[len(flair_frames) :]
    low, high = flair_offsets.min() - POSITION_TOLERANCE_MM, flair_offsets.max() + POSITION_TOLERANCE_MM
    between = int(np.count_nonzero((orphan_offsets > low) & (orphan_offsets < high)))
    parts = []
    if between:
        parts.append(
            f"{frames(between)} between FLAIR slices, where no FLAIR slice was read, left out (a FLAIR file missing "
            "or unreadable there, or T1 sliced more finely)"
        )
    if beyond := len(left_out) - between:
        parts.append(f"{frames(beyond)} beyond the FLAIR slices' ends left out (the T1 series reach further)")
    return "; ".join(parts)


def _unreadable_t1_reason(choice: SeriesChoice, errors: Mapping[int, ServiceError]) -> str | None:
    """The reason the first file of a T1 series in use failed, when every one of its files did; else None. Said in
    the note, where a pairing failure would blame the slices' geometry (e.g. T1 series in 12-bit JPEG Extended,
    which no decoder here reads)."""
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
