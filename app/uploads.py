"""The input side of a prediction: uploaded bytes -> checked, decoded, preprocessed slices.

headers checked (`plan_raster_uploads`: pixels, samples, memory cost, slices) -> decode (`app.imaging`) ->
`app.core.preprocessing.preprocess_slice`. No HTTP here: failures are `app.errors.ServiceError`s, and a file that
fails yields its error in its place so the others go on.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from app.core.preprocessing import InvalidImageError, preprocess_slice
from app.errors import InvalidSliceError, PayloadTooLargeError, ServiceError, TooManySlicesError
from app.imaging import check_image_header, decode_image, read_image_header
from app.memory_budget import MODEL_INPUT_BYTES, check_cost, mask_bytes
from app.settings import Settings


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

    @classmethod
    def from_settings(cls, settings: Settings, max_request_slices: int | None = None) -> UploadLimits:
        return cls(
            max_upload_bytes=settings.max_upload_bytes,
            max_image_pixels=settings.max_image_pixels,
            max_dicom_pixels=settings.max_dicom_pixels,
            max_decode_bytes=settings.decode_memory_bytes,
            max_request_slices=max_request_slices,
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
    """`prepared` (the slices of one series) with an error in place of each slice whose file has the bytes of an
    earlier one: a file sent twice (a "copy" beside its original) would be one more slice of the volume, and its
    tumor counted twice (browser review finding: +22 % volume, with no note). A blank slice may repeat: the empty
    slices at a volume's ends can be identical files, and they add nothing."""
    first: dict[str, int] = {}
    checked = list(prepared)
    for index, (item, data) in enumerate(zip(prepared, uploads, strict=True)):
        if not isinstance(item, PreparedSlice) or not isinstance(data, bytes):
            continue
        digest = sha256_hex(data)
        if digest not in first:
            first[digest] = index
        elif np.ptp(item.model_input) > 0:
            checked[index] = InvalidSliceError(
                f"the file is the same as {request_file(first[digest])}; a slice of a series is read once"
            )
    return checked


def request_file(index: int) -> str:
    """How an error names another file of the request: by its index in the answer's lists, and as a person counts."""
    return f"the request's file at index {index} (file {index + 1} as sent)"


def plan_raster_uploads(
    uploads: Sequence[bytes | ServiceError], limits: UploadLimits, extra_bytes_per_pixel: int = 0
) -> RasterPlan:
    """Check every file's header (size, pixels, samples, cost) and the request's slices and cost; nothing is decoded.

    A file that fails yields its error in its place. The files decode one at a time and keep only their model
    input, so the request costs one model input and one mask at the file's size per file (`mask_bytes`) plus the
    largest file's decoding. `extra_bytes_per_pixel` counts what the caller makes of a decoded file besides (the
    overlay's drawing and PNG).

    Raises
    ------
    TooManySlicesError, app.errors.OverMemoryBudgetError
        For the request as a whole.
    """
    checked: list[bytes | ServiceError] = []
    costs: list[int] = []
    slice_pixels: list[int] = []
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
    check_request_slices(len(costs), limits)
    decoding = len(costs) * MODEL_INPUT_BYTES + max((item - MODEL_INPUT_BYTES for item in costs), default=0)
    cost = decoding + mask_bytes(slice_pixels)
    check_request_cost(cost, len(costs), limits)
    return RasterPlan(checked, cost)


def prepare_upload(data: bytes, limits: UploadLimits, keep_image: bool = False) -> PreparedSlice:
    """Check the size, decode, and preprocess one file (CPU work: call it off the event loop).

    The full-size decoded image is dropped unless `keep_image` (the overlay needs it), so a batch of large files
    holds only 256x256 inputs while it waits for the models.
    """
    check_upload_size(len(data), limits)
    image = decode_image(data, max_pixels=limits.max_image_pixels, max_bytes=limits.max_decode_bytes)
    size = (int(image.shape[0]), int(image.shape[1]))
    return PreparedSlice(model_input(image), size, image if keep_image else None)


def model_input(image: np.ndarray) -> np.ndarray:
    """`preprocess_slice`, with an image it refuses reported as the client's `InvalidSliceError`."""
    try:
        return preprocess_slice(image)
    except InvalidImageError as error:
        raise InvalidSliceError(str(error)) from error


def prepare_uploads(
    uploads: Sequence[bytes | ServiceError], limits: UploadLimits
) -> list[PreparedSlice | ServiceError]:
    """`prepare_upload` for each file; a file that fails (or could not even be read) yields its error in its place."""
    prepared: list[PreparedSlice | ServiceError] = []
    for data in uploads:
        if isinstance(data, ServiceError):
            prepared.append(data)
            continue
        try:
            prepared.append(prepare_upload(data, limits))
        except ServiceError as error:
            prepared.append(error)
    return prepared


def raster_series_breaks(prepared: Sequence[PreparedSlice | ServiceError]) -> set[int]:
    """The places k between the k-th and (k+1)-th decoded slice of a raster series with two or more files that
    failed between them: as in a DICOM series (`app.dicom.dicom_series.series_breaks`), the series clean-up joins masks
    across one missing slice, as a tumor goes on through it, but not across more."""
    decoded = [index for index, item in enumerate(prepared) if isinstance(item, PreparedSlice)]
    return {place for place, (before, after) in enumerate(itertools.pairwise(decoded)) if after - before > 2}


def check_one_size(slices: Sequence[PreparedSlice]) -> None:
    """The raster slices of a series are one volume, so one size: the series clean-up joins their masks on the
    models' 256 x 256 grid, which lines up only slices of the same size."""
    sizes = sorted({item.size for item in slices})
    if len(sizes) > 1:
        raise InvalidSliceError(
            "the slices of one series must share one size; got "
            f"{', '.join(f'{height} x {width}' for height, width in sizes)} (height x width)"
        )


def stack_inputs(prepared: Sequence[PreparedSlice]) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """The model batch and the original sizes of the slices that decoded."""
    return np.stack([item.model_input for item in prepared]), [item.size for item in prepared]
