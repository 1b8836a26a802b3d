"""The output side of a prediction: model answers -> the response payloads (`app.schemas`), masks encoded.

Used by the HTTP routes and the CLI alike, so both print the same JSON for the same slice.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from app import masks, schemas
from app.dicom.dicom_frame import offsets_along_normal
from app.dicom.dicom_series import SliceInput
from app.dicom.slice_order import slices_missing_before
from app.errors import ServiceError
from app.inference import SlicePrediction
from app.series.choice import SeriesChoice, SeriesUse
from app.series.result import SeriesResult


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
    """A slice's answer as the API returns it: its mask (only for a positive slice) in `mask_format`."""
    mask = prediction.mask
    return schemas.Prediction(
        tumor_probability=prediction.probability,
        tumor_detected=prediction.detected,
        threshold=threshold,
        mask=mask_payload(mask, mask_format) if prediction.detected and mask is not None else None,
    )


def payloads(
    outcomes: Sequence[SlicePrediction | ServiceError], threshold: float, mask_format: schemas.MaskFormat
) -> list[schemas.Prediction | ServiceError]:
    """Encode each prediction for the response; errors pass through."""
    return [
        outcome if isinstance(outcome, ServiceError) else slice_payload(outcome, threshold, mask_format)
        for outcome in outcomes
    ]


def series_slices(
    inputs: Sequence[SliceInput],
    predictions: Sequence[SlicePrediction],
    threshold: float,
    mask_format: schemas.MaskFormat,
) -> list[schemas.SeriesSlice]:
    """One entry per slice of a DICOM series, in the order read (the files' order in the request, a multi-frame
    file's frames in frame order; not sorted), naming the file, the instance (and frame) the FLAIR channel came from,
    with its place in the volume: position along the slice normal, and the slices missing before it."""
    frames = [slice_input.reference for slice_input in inputs]
    offsets = offsets_along_normal(frames)
    missing = slices_missing_before(frames)
    return [
        schemas.SeriesSlice(
            index=index,
            file_index=slice_input.file_index,
            sop_instance_uid=slice_input.reference.sop_instance_uid,
            frame_number=slice_input.reference.frame_number,
            position_along_normal_mm=None if offsets is None else float(offsets[index]),
            slices_missing_before=missing[index],
            prediction=slice_payload(prediction, threshold, mask_format),
        )
        for index, (slice_input, prediction) in enumerate(zip(inputs, predictions, strict=True))
    ]


def series_summary(result: SeriesResult, choice: SeriesChoice) -> dict[str, object]:
    """What an answer on one series says of the whole series, JSON-ready: the API's top-level fields and the CLI's
    "series" (one place, so a field added shows in both): the decision, the volume and when it may fall short, and
    the series the models read."""
    return {
        "tumor_detected": result.tumor_detected,
        "tumor_volume_ml": result.tumor_volume_ml,
        "slices_missing": result.slices_missing,
        "tumor_reaches_series_end": result.tumor_reaches_series_end,
        **series_choice(choice).model_dump(mode="json"),
    }


def series_choice(choice: SeriesChoice) -> schemas.SeriesChoice:
    """The series the models read and those left out, as the JSON answers report them."""
    return schemas.SeriesChoice(
        series_used=[series_use(item) for item in choice.used],
        series_left_out=[series_use(item) for item in choice.left_out],
        selection_notes=list(choice.notes),
    )


def series_use(item: SeriesUse) -> schemas.SeriesUse:
    return schemas.SeriesUse(
        role=item.role,
        series_number=item.series_number,
        series_description=item.series_description,
        evidence=item.evidence,
        files=list(item.files),
    )


def file_failures(file_errors: dict[int, ServiceError]) -> list[schemas.BatchItemFailure]:
    """The files of a request that could not be read, by their position in it."""
    return [
        schemas.BatchItemFailure(index=position, error=schemas.ErrorDetail(**error.to_dict()))
        for position, error in sorted(file_errors.items())
    ]
