"""From uploaded bytes to the response payload: the one pipeline shared by the HTTP API and the CLI.

decode (`app.imaging`) -> `training.preprocessing.preprocess_slice` -> models (`app.inference.Predictor`, through the
micro-batcher in the service) -> mask encodings (`app.masks`). No HTTP here: failures are `app.errors.ServiceError`s.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from app import masks, schemas
from app.errors import InvalidSliceError, PayloadTooLargeError, ServiceError
from app.imaging import decode_image
from app.inference import Predictor, SlicePrediction
from app.settings import Settings
from training.preprocessing import InvalidImageError, preprocess_slice


@dataclass(frozen=True)
class UploadLimits:
    """Per-file limits; `max_upload_bytes` bounds the file, `max_image_pixels` its width x height."""

    max_upload_bytes: int
    max_image_pixels: int

    @classmethod
    def from_settings(cls, settings: Settings) -> UploadLimits:
        return cls(max_upload_bytes=settings.max_upload_bytes, max_image_pixels=settings.max_image_pixels)


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


def prepare_upload(data: bytes, limits: UploadLimits, keep_image: bool = False) -> PreparedSlice:
    """Check the size, decode, and preprocess one file (CPU work: call it off the event loop).

    The full-size decoded image is dropped unless `keep_image` (the overlay needs it), so a batch of large files
    holds only 256x256 inputs while it waits for the models.
    """
    check_upload_size(len(data), limits)
    image = decode_image(data, max_pixels=limits.max_image_pixels)
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


def stack_inputs(prepared: Sequence[PreparedSlice]) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """The model batch and the original sizes of the slices that decoded."""
    return np.stack([item.model_input for item in prepared]), [item.size for item in prepared]


def mask_payload(mask: np.ndarray, mask_format: schemas.MaskFormat) -> schemas.Mask:
    """Encode a 0/1 mask. An empty mask (classifier positive, no pixel over the mask threshold) gives area 0 and
    bbox null, with the encodings still present so a client can treat every positive alike."""
    height, width = mask.shape
    return schemas.Mask(
        size=[height, width],
        rle=schemas.RunLengthEncoding(**masks.encode_rle(mask)) if mask_format.includes_rle else None,
        png=masks.encode_png(mask) if mask_format.includes_png else None,
        area_pixels=masks.area(mask),
        bbox=masks.bbox(mask),
    )


INLINE_ENCODE_MAX_PIXELS = 256 * 256
"""Masks up to this size are encoded where the answer is built (on the event loop in the service): 0.2-0.5 ms for
RLE / PNG / both at 256x256 on a 2-core CPU, less than a round trip to a worker thread (0.3-0.5 ms there)."""


def encodes_quickly(prediction: SlicePrediction) -> bool:
    """True if the prediction's payload is cheap enough to build without handing it to a worker thread."""
    return prediction.mask is None or prediction.mask.size <= INLINE_ENCODE_MAX_PIXELS


def slice_payload(prediction: SlicePrediction, threshold: float, mask_format: schemas.MaskFormat) -> schemas.Prediction:
    mask = prediction.mask
    return schemas.Prediction(
        tumor_probability=prediction.probability,
        tumor_detected=prediction.detected,
        threshold=threshold,
        mask=mask_payload(mask, mask_format) if prediction.detected and mask is not None else None,
    )


def in_request_order(
    prepared: Sequence[PreparedSlice | ServiceError], predictions: Sequence[SlicePrediction]
) -> list[SlicePrediction | ServiceError]:
    """Put each decoded file's prediction, and each failed file's error, back in request order."""
    remaining = iter(predictions)
    return [item if isinstance(item, ServiceError) else next(remaining) for item in prepared]


def payloads(
    outcomes: Sequence[SlicePrediction | ServiceError], threshold: float, mask_format: schemas.MaskFormat
) -> list[schemas.Prediction | ServiceError]:
    """Encode each prediction for the response; errors pass through."""
    return [
        outcome if isinstance(outcome, ServiceError) else slice_payload(outcome, threshold, mask_format)
        for outcome in outcomes
    ]


def predict_uploads(
    predictor: Predictor, uploads: Sequence[bytes | ServiceError], limits: UploadLimits
) -> list[SlicePrediction | ServiceError]:
    """The synchronous pipeline (CLI, tests): all files as one model batch, errors in place of failed files."""
    prepared = prepare_uploads(uploads, limits)
    decoded = [item for item in prepared if isinstance(item, PreparedSlice)]
    predictions = predictor.predict_preprocessed(*stack_inputs(decoded)) if decoded else []
    return in_request_order(prepared, predictions)
