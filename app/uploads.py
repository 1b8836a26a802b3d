"""The input side of a prediction: uploaded bytes -> checked, decoded, preprocessed slices.

headers checked (`plan_raster_uploads`: pixels, samples, memory cost, slices) -> decode (`app.imaging`) ->
`app.core.preprocessing.preprocess_slice`. No HTTP here: failures are `app.errors.ServiceError`s, and a file that
fails yields its error in its place so the others go on.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from app.errors import (
    InvalidSliceError,
    PayloadTooLargeError,
    RepeatedSliceError,
    ServiceError,
    TooManySlicesError,
    UnsupportedMediaTypeError,
)
from app.imaging import (
    RasterHeader,
    check_image_header,
    decode_samples,
    float_channels,
    is_stretched,
    read_image_header,
    stretch_to_uint8,
)
from app.intensity_range import sample_values, stretch_ranges
from app.memory_budget import MODEL_INPUT_BYTES, check_cost, mask_bytes
from app.model_input import model_input
from app.settings import Settings

if TYPE_CHECKING:
    from app.pacs.pacs_sync_config import PacsSyncConfig


@dataclass(frozen=True)
class UploadLimits:
    """Per-file and per-request limits, checked from the headers before anything is decoded.

    `max_upload_bytes` bounds the file, `max_image_pixels` its width x height, `max_dicom_pixels` a DICOM file's
    rows x columns x frames, `max_decode_bytes` the memory decoding one file, and one request's files together, may
    take (None: no budget), `max_request_slices` the slices of one request (None: no limit; the service sets it to
    its inference queue, which could never take more). The defaults are the settings' defaults.
    """

    max_upload_bytes: int = Settings.model_fields["max_upload_bytes"].default
    max_image_pixels: int = Settings.model_fields["max_image_pixels"].default
    max_dicom_pixels: int = Settings.model_fields["max_dicom_pixels"].default
    max_decode_bytes: int | None = Settings.model_fields["decode_memory_bytes"].default
    max_request_slices: int | None = None

    # Every command's limits are built here, side by side, so that a newcomer changing one finds them all.

    @classmethod
    def from_settings(cls, settings: Settings, max_request_slices: int | None = None) -> UploadLimits:
        """The settings' limits as they are: `brain-tumor predict`'s (no limit on the slices of a run)."""
        return cls(
            max_upload_bytes=settings.max_upload_bytes,
            max_image_pixels=settings.max_image_pixels,
            max_dicom_pixels=settings.max_dicom_pixels,
            max_decode_bytes=settings.decode_memory_bytes,
            max_request_slices=max_request_slices,
        )

    @classmethod
    def for_service(cls, settings: Settings) -> UploadLimits:
        """The HTTP service's: a request holds at most INFERENCE_QUEUE_SLICES slices, which is all its inference
        queue could ever take."""
        return cls.from_settings(settings, max_request_slices=settings.inference_queue_slices)

    @classmethod
    def for_node(cls, settings: Settings) -> UploadLimits:
        """The DICOM node's: an instance it kept (up to DICOM_NODE_MAX_INSTANCE_BYTES) is not refused again for its
        size, as MAX_UPLOAD_BYTES, the HTTP upload limit, would (a 22 MiB Enhanced MR 3D FLAIR); DECODE_MEMORY_BYTES
        still bounds the study."""
        return replace(cls.from_settings(settings), max_upload_bytes=settings.dicom_node_max_instance_bytes)

    @classmethod
    def for_pacs(cls, config: PacsSyncConfig) -> UploadLimits:
        """pacs-sync's, from its configuration (the settings, some of them given on its command line). A study is one
        request: `max_study_bytes` (DECODE_MEMORY_BYTES) bounds its decoding as it bounds its fetch,
        `max_instance_bytes` (PACS_MAX_INSTANCE_BYTES) each file, `max_dicom_pixels` (MAX_DICOM_PIXELS) each
        instance's pixels. Built-in defaults instead would refuse a study that DECODE_MEMORY_BYTES was raised for,
        after fetching it."""
        return cls(
            max_upload_bytes=config.max_instance_bytes,
            max_dicom_pixels=config.max_dicom_pixels,
            max_decode_bytes=config.max_study_bytes,
        )


@dataclass(frozen=True, eq=False)
class RasterPlan:
    """A request's PNG/JPEG/TIFF files after their headers were checked: each file's bytes or its refusal, in
    place, and what decoding the accepted ones will cost."""

    uploads: list[bytes | ServiceError]
    cost_bytes: int


@dataclass(frozen=True)
class PreparedSlice:
    """One decoded upload: its model input (256x256x3), original (H, W), and the decoded uint8 image if kept."""

    model_input: np.ndarray
    size: tuple[int, int]
    image: np.ndarray | None = None


def sha256_hex(data: bytes) -> str:
    """What the logs record about an upload: its hash, never its content or name."""
    return hashlib.sha256(data).hexdigest()


def check_upload_size(size: int, limits: UploadLimits, complete: bool = True) -> None:
    """Raise `PayloadTooLargeError` if a file of `size` bytes is over the limit.

    `complete=False` says reading stopped at `size` bytes, so the file is at least that large.
    """
    if size > limits.max_upload_bytes:
        found = f"{size} bytes" if complete else f"more than {limits.max_upload_bytes} bytes"
        raise PayloadTooLargeError(f"file must be at most {limits.max_upload_bytes} bytes; got {found}")


def check_request_slices(slices: int, limits: UploadLimits) -> None:
    """Raise `TooManySlicesError` if one request holds more slices than `limits.max_request_slices`."""
    if limits.max_request_slices is not None and slices > limits.max_request_slices:
        raise TooManySlicesError(
            f"a request may hold at most {limits.max_request_slices} slices (INFERENCE_QUEUE_SLICES); got {slices}"
        )


def check_request_cost(cost: int, files: int, limits: UploadLimits) -> None:
    """Raise `app.errors.OverMemoryBudgetError` if decoding a request's files takes more than the budget."""
    if limits.max_decode_bytes is not None:
        check_cost(
            f"this request's {files} files",
            cost,
            "from their headers: what each keeps until the answer is written (its model input and mask), and the "
            "working copies of the largest",
            limits.max_decode_bytes,
        )


def refuse_repeated_slices(
    prepared: Sequence[PreparedSlice | ServiceError], uploads: Sequence[bytes | ServiceError]
) -> list[PreparedSlice | ServiceError]:
    """`prepared` (the slices of one series) with a `RepeatedSliceError` in place of each slice whose pixels are an
    earlier one's: a file sent twice (a "copy" beside its original) would be one more slice of the volume, and its
    tumor counted twice (+22 % volume, with no note). Compared on what the models read, not on the file's bytes (the
    same pixels saved again at another PNG compression level would be another slice). A blank slice may repeat: the
    empty slices at a volume's ends can be identical files, and they add nothing."""
    first: dict[tuple[tuple[int, int], str], int] = {}
    checked = list(prepared)
    for index, (item, data) in enumerate(zip(prepared, uploads, strict=True)):
        if not isinstance(item, PreparedSlice) or not isinstance(data, bytes):
            continue
        key = (item.size, sha256_hex(np.ascontiguousarray(item.model_input).tobytes()))
        if key not in first:
            first[key] = index
        elif np.ptp(item.model_input) > 0:
            checked[index] = RepeatedSliceError(
                f"the file holds the same pixels as {request_file(first[key])}; a slice of a series is read once"
            )
    return checked


def request_file(index: int, where: str = "") -> str:
    """How an error names another file of the request: by its index in the answer's lists, and as a person counts;
    `where` adds what else finds it (a DICOM file's series and instance, `app.series.info.where_in_study`)."""
    return f"the request's file at index {index} (file {index + 1} as sent{'; ' + where if where else ''})"


MOST_FILES_NAMED = 5
"""How many files an error names (`request_files`) before it only counts the rest."""


def request_files(indices: Sequence[int], where: str = "") -> str:
    """`request_file` for several files: the first `MOST_FILES_NAMED`, then how many more (so that a refusal of a
    150-file request for one other patient's file lets the user find it); `where` as there, for the files named."""
    if len(indices) == 1:
        return request_file(indices[0], where)
    named = indices[:MOST_FILES_NAMED]
    more = f" and {len(indices) - len(named)} more" if len(indices) > len(named) else ""
    return (
        f"the request's files at index {', '.join(map(str, named))} (files {', '.join(str(i + 1) for i in named)} "
        f"as sent{'; ' + where if where else ''}){more}"
    )


def files_that_differ(
    groups: Mapping[object, Sequence[int]], where: Callable[[Sequence[int]], str] | None = None
) -> str:
    """The files (request indices) of every group but the largest, as `request_files` names them (`where` says where
    the ones named lie), and how many the largest holds: "... differ from the other 12"."""
    most, *others = sorted(groups.values(), key=len, reverse=True)
    odd = sorted(index for group in others for index in group)
    place = where(odd[:MOST_FILES_NAMED]) if where is not None else ""
    return f"{request_files(odd, place)} {'differs' if len(odd) == 1 else 'differ'} from the other {len(most)}"


def plan_raster_uploads(
    uploads: Sequence[bytes | ServiceError],
    limits: UploadLimits,
    extra_bytes_per_pixel: int = 0,
    series: bool = False,
) -> RasterPlan:
    """Check every file's header (size, pixels, samples, cost) and the request's slices and cost; nothing is decoded.

    A file that fails yields its error in its place. The files decode one at a time and keep only their model
    input, so the request costs one model input and one mask at the file's size per file (`mask_bytes`) plus the
    largest file's decoding. `extra_bytes_per_pixel` counts what the caller makes of a decoded file besides (the
    overlay's drawing and PNG). With `series` (`prepare_series_uploads`), the range of the deeper-than-8-bit slices
    is measured first: what that holds is counted on top (`series_range_bytes`).

    Raises
    ------
    TooManySlicesError, app.errors.OverMemoryBudgetError
        For the request as a whole.
    """
    checked: list[bytes | ServiceError] = []
    costs: list[int] = []
    slice_pixels: list[int] = []
    deep: list[RasterHeader] = []
    for data in uploads:
        if isinstance(data, ServiceError):
            checked.append(data)
            continue
        try:
            check_upload_size(len(data), limits)
            header = read_image_header(data)
            check_image_header(header, limits.max_image_pixels, limits.max_decode_bytes)
        except ServiceError as error:
            checked.append(error)
            continue
        checked.append(data)
        costs.append(header.cost_bytes + extra_bytes_per_pixel * header.pixels)
        slice_pixels.append(header.pixels)
        if is_deep(header):
            deep.append(header)
    check_request_slices(len(costs), limits)
    decoding = len(costs) * MODEL_INPUT_BYTES + max((item - MODEL_INPUT_BYTES for item in costs), default=0)
    cost = decoding + mask_bytes(slice_pixels) + (series_range_bytes(deep) if series else 0)
    check_request_cost(cost, len(costs), limits)
    return RasterPlan(checked, cost)


def is_deep(header: RasterHeader) -> bool:
    """Whether a file's samples are deeper than 8 bits (16-bit PNG or TIFF, 32-bit, float): the slices a series
    stretches over its range (`prepare_series_uploads`)."""
    return header.bytes_per_sample > 1


SeriesRanges = Mapping[tuple[int, int], tuple[float, float]]
"""(low, high) of the stretch of a series' deep slices, by (dimensions of the decoded slice: 2 grey, 3 colour;
channel)."""


def series_range_bytes(deep: Sequence[RasterHeader]) -> int:
    """What measuring the range of a series whose deep slices have these headers holds besides the decoding of one
    file (`app.intensity_range.stretch_ranges`): each channel's percentile sample (8 bytes a value), and one of them
    again while it is joined into one array. A grey slice has one channel, a colour one three (a grey+alpha file can
    decode as either)."""
    if not deep:
        return 0
    pixels = [header.pixels for header in deep]
    values = sample_values(sum(pixels), pixels)  # each channel's sample holds at most this many
    channels = (3 if any(header.samples >= 2 for header in deep) else 0) + (
        1 if any(header.samples <= 2 for header in deep) else 0
    )
    return 8 * values * (channels + 1)


def prepare_upload(
    data: bytes, limits: UploadLimits, keep_image: bool = False, ranges: SeriesRanges | None = None
) -> PreparedSlice:
    """Check the size, decode, and preprocess one file (CPU work: call it off the event loop).

    The full-size decoded image is dropped unless `keep_image` (the overlay needs it), so a batch of large files
    holds only 256x256 inputs while it waits for the models. A deeper than 8-bit image is stretched over its own
    range, or over its series' `ranges` (`prepare_series_uploads`).
    """
    check_upload_size(len(data), limits)
    samples = decode_samples(data, max_pixels=limits.max_image_pixels, max_bytes=limits.max_decode_bytes)
    image = stretch_to_uint8(samples, _channel_ranges(samples, ranges))
    del samples
    size = (int(image.shape[0]), int(image.shape[1]))
    return PreparedSlice(model_input(image), size, image if keep_image else None)


def _channel_ranges(samples: np.ndarray, ranges: SeriesRanges | None) -> list[tuple[float, float]] | None:
    """The series' range of each channel of `samples`; None (the slice's own range) if the series has none."""
    if ranges is None:
        return None
    keys = [(samples.ndim, channel) for channel in range(samples.shape[2] if samples.ndim == 3 else 1)]
    return [ranges[key] for key in keys] if all(key in ranges for key in keys) else None


def prepare_uploads(
    uploads: Sequence[bytes | ServiceError],
    limits: UploadLimits,
    ranges_by_file: Mapping[int, SeriesRanges] | None = None,
) -> list[PreparedSlice | ServiceError]:
    """`prepare_upload` for each file; a file that fails (or could not even be read) yields its error in its place.
    A file whose position is in `ranges_by_file` is stretched over those ranges (`prepare_series_uploads`)."""
    prepared: list[PreparedSlice | ServiceError] = []
    for index, data in enumerate(uploads):
        if isinstance(data, ServiceError):
            prepared.append(data)
            continue
        try:
            prepared.append(prepare_upload(data, limits, ranges=(ranges_by_file or {}).get(index)))
        except ServiceError as error:
            prepared.append(error)
    return prepared


def prepare_series_uploads(
    uploads: Sequence[bytes | ServiceError], limits: UploadLimits
) -> list[PreparedSlice | ServiceError]:
    """`prepare_uploads` for the slices of one volume (a series): the deeper than 8-bit ones are stretched over the
    series, one range per channel, not each over itself.

    Why: the kaggle_3m volumes the models learned from were stretched to 0..255 per volume, and a DICOM series is
    stretched the same way (`app.dicom.dicom_series.normalise_volume`). Each slice over itself would brighten a volume's
    darker end slices 1.3-1.9 times, and two tumor-free slices of a 16-bit export would be answered "tumor" that the
    8-bit export of the same volume answers "no tumor". The range is
    `app.intensity_range.stretch_ranges`: the DICOM series' rules, with their outlier guards.

    Which slices: those whose header says deeper than 8 bits (`is_deep`). 8-bit slices are read as they are (/255,
    as training read its slices), also in a series that mixes them with deep ones: those deep slices are stretched
    over the deep slices alone (the 8-bit ones hold no scanner values to share their range). Grey slices (FLAIR) and
    colour ones (pre-contrast, FLAIR, post-contrast) get ranges of their own, channel by channel.

    Memory, as `prepare_uploads`: one file decoded at a time, and only its model input kept. A first pass decodes
    each deep slice and keeps its minimum, maximum and a sample for the percentiles; a pass more for each outlier
    rule that applies (at most three; a series without outliers needs none) decodes them again and keeps a few
    numbers; then every file is decoded once more and mapped with the series' range. The deep slices are decoded
    two to five times: CPU, not memory. `plan_raster_uploads(series=True)` counts the samples
    (`series_range_bytes`). A deep file that fails to decode yields its error and takes no part in the range.
    """
    deep: list[int] = []
    pixels = 0
    for index, data in enumerate(uploads):
        if isinstance(data, bytes):
            try:
                check_upload_size(len(data), limits)
                header = read_image_header(data)
            except ServiceError:
                continue  # reported by `prepare_upload` below
            if is_deep(header):
                deep.append(index)
                pixels += header.pixels
    failed: dict[int, ServiceError] = {}

    def frames() -> Iterator[tuple[tuple[int, int], np.ndarray]]:
        for index in deep:
            if index in failed:
                continue
            try:
                samples = decode_samples(
                    uploads[index], max_pixels=limits.max_image_pixels, max_bytes=limits.max_decode_bytes
                )
            except ServiceError as error:
                failed[index] = error
                continue
            if is_stretched(samples):
                for channel, values in float_channels(samples):
                    yield (samples.ndim, channel), values
                    del values  # before the next channel's copy
            del samples  # before the next file is decoded

    ranges = stretch_ranges(frames, pixels) if deep else {}
    with_failures = [failed.get(index, data) for index, data in enumerate(uploads)]
    return prepare_uploads(with_failures, limits, dict.fromkeys(deep, ranges))


def raster_series_breaks(prepared: Sequence[PreparedSlice | ServiceError]) -> set[int]:
    """The places k between the k-th and (k+1)-th decoded slice of a raster series with two or more files that
    failed between them: as in a DICOM series (`app.dicom.slice_order.series_breaks`), the series clean-up joins masks
    across one missing slice, as a tumor goes on through it, but not across more. A file that is no image at all (a
    note or a desktop.ini beside the slices, `UnsupportedMediaTypeError`) is no missing slice (two notes between
    slices would cost two tumor slices their masks), and neither is a copy of a slice (`RepeatedSliceError`: two
    copies of a slice would cut the series there)."""
    slices = [item for item in prepared if not isinstance(item, (UnsupportedMediaTypeError, RepeatedSliceError))]
    decoded = [index for index, item in enumerate(slices) if isinstance(item, PreparedSlice)]
    return {place for place, (before, after) in enumerate(itertools.pairwise(decoded)) if after - before > 2}


def check_one_size(prepared: Sequence[PreparedSlice | ServiceError]) -> None:
    """The raster slices of a series are one volume, so one size: the series clean-up joins their masks on the
    models' 256 x 256 grid, which lines up only slices of the same size. The refusal names the files whose size
    differs from the most, so that one odd slice among many can be found."""
    files: dict[tuple[int, int], list[int]] = {}
    for index, item in enumerate(prepared):
        if isinstance(item, PreparedSlice):
            files.setdefault(item.size, []).append(index)
    if len(files) > 1:
        raise InvalidSliceError(
            "the slices of one series must share one size; got "
            f"{', '.join(f'{height} x {width}' for height, width in sorted(files))} (height x width): "
            f"{files_that_differ(files)}"
        )


def stack_inputs(prepared: Sequence[PreparedSlice]) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """The model batch and the original sizes of the slices that decoded."""
    return np.stack([item.model_input for item in prepared]), [item.size for item in prepared]
