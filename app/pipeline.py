"""From uploaded bytes to the response payload: the one pipeline shared by the HTTP API and the CLI.

decode (`app.imaging`) -> `training.preprocessing.preprocess_slice` -> `Predictor` -> mask encodings
(`app.masks`). No HTTP here: failures are `app.errors.ServiceError`s.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from app import masks, schemas
from app.errors import InvalidSliceError, PayloadTooLargeError, ServiceError
from app.imaging import decode_image
from app.inference import Predictor, SlicePrediction
from app.overlay import render_overlay_png
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


def check_upload_size(size: int, limits: UploadLimits, complete: bool = True) -> None:
    """Raise `PayloadTooLargeError` if a file of `size` bytes is over the limit.

    `complete=False` says reading stopped at `size` bytes, so the file is at least that large.
    """
    if size > limits.max_upload_bytes:
        found = f"{size} bytes" if complete else f"more than {limits.max_upload_bytes} bytes"
        raise PayloadTooLargeError(f"file must be at most {limits.max_upload_bytes} bytes; got {found}")


def load_slice(data: bytes, limits: UploadLimits) -> np.ndarray:
    """Check the size and decode one file into a uint8 slice (HxW or HxWx3)."""
    check_upload_size(len(data), limits)
    return decode_image(data, max_pixels=limits.max_image_pixels)


def prepare_slice(image: np.ndarray) -> np.ndarray:
    """`preprocess_slice`, with its `InvalidImageError` turned into the service's error."""
    try:
        return preprocess_slice(image)
    except InvalidImageError as error:
        raise InvalidSliceError(str(error)) from error


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


def slice_payload(prediction: SlicePrediction, threshold: float, mask_format: schemas.MaskFormat) -> schemas.Prediction:
    mask = prediction.mask
    return schemas.Prediction(
        tumor_probability=prediction.probability,
        tumor_detected=prediction.detected,
        threshold=threshold,
        mask=mask_payload(mask, mask_format) if prediction.detected and mask is not None else None,
    )


def predict_uploads(
    predictor: Predictor,
    uploads: Sequence[bytes],
    limits: UploadLimits,
    mask_format: schemas.MaskFormat = schemas.MaskFormat.RLE,
) -> list[schemas.Prediction | ServiceError]:
    """Predict several files as one model batch; a file that fails yields its error in its place.

    Each file is decoded and shrunk to model input before the next is read, so at most one full-size image is
    held at a time besides the masks.
    """
    outcomes: list[schemas.Prediction | ServiceError | None] = [None] * len(uploads)
    inputs: list[np.ndarray] = []
    sizes: list[tuple[int, int]] = []
    positions: list[int] = []
    for position, data in enumerate(uploads):
        try:
            image = load_slice(data, limits)
            inputs.append(prepare_slice(image))
        except ServiceError as error:
            outcomes[position] = error
            continue
        sizes.append((int(image.shape[0]), int(image.shape[1])))
        positions.append(position)
    batch = np.stack(inputs) if inputs else None
    for position, prediction in zip(positions, predictor.predict_preprocessed(batch, sizes), strict=True):
        outcomes[position] = slice_payload(prediction, predictor.classifier_threshold, mask_format)
    return outcomes  # type: ignore[return-value]  # every position was filled above


def predict_upload(
    predictor: Predictor, data: bytes, limits: UploadLimits, mask_format: schemas.MaskFormat = schemas.MaskFormat.RLE
) -> schemas.Prediction:
    """Predict one file; raises its `ServiceError`."""
    (outcome,) = predict_uploads(predictor, [data], limits, mask_format)
    if isinstance(outcome, ServiceError):
        raise outcome
    return outcome


def overlay_upload(predictor: Predictor, data: bytes, limits: UploadLimits) -> tuple[bytes, SlicePrediction]:
    """PNG of the slice with the predicted outline, and the prediction it shows."""
    image = load_slice(data, limits)
    (prediction,) = predictor.predict_preprocessed(prepare_slice(image)[None], [image.shape[:2]])
    return render_overlay_png(image, prediction.mask), prediction
