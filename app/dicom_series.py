"""DICOM uploads handled as one series: read each file, group frames into slices, then shape the answer.

Used by the HTTP routes (with the micro-batcher running the models in between) so that JSON and DICOM SEG answers
come from the same slices and predictions. No HTTP here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from app import schemas
from app.dicom_input import SliceInput, prepare_inputs, read_dicom
from app.dicom_seg import SeriesResult
from app.errors import InvalidSliceError, ServiceError
from app.pipeline import model_input, slice_payload


class MixedInputError(InvalidSliceError):
    """DICOM and raster images in one request: they cannot form one series."""

    code = "mixed_input"


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
    """The model batch (`pipeline.model_input`, as for raster uploads) and the original size of each slice."""
    batch = np.stack([model_input(slice_input.image) for slice_input in inputs])
    return batch, [(int(item.image.shape[0]), int(item.image.shape[1])) for item in inputs]


def series_payload(
    result: SeriesResult,
    file_errors: dict[int, ServiceError],
    threshold: float,
    mask_format: schemas.MaskFormat,
    models: schemas.ModelTags,
    request_id: str,
) -> schemas.SeriesPredictionResponse:
    slices = [
        schemas.SeriesSlice(
            index=index,
            sop_instance_uid=slice_input.reference.sop_instance_uid,
            frame_number=slice_input.reference.frame_number,
            prediction=slice_payload(prediction, threshold, mask_format),
        )
        for index, (slice_input, prediction) in enumerate(zip(result.inputs, result.predictions, strict=True))
    ]
    return schemas.SeriesPredictionResponse(
        tumor_detected=result.tumor_detected,
        tumor_volume_ml=result.tumor_volume_ml,
        threshold=threshold,
        slices=slices,
        file_errors=[
            schemas.BatchItemFailure(index=position, error=schemas.ErrorDetail(**error.to_dict()))
            for position, error in sorted(file_errors.items())
        ],
        models=models,
        request_id=request_id,
    )
