"""POST /v1/predict, /v1/predict/batch and /v1/overlay: slices in, tumor probability and mask out."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Query, Request, UploadFile
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from app import pipeline, schemas
from app.api.deps import BatcherDep, MetricsDep, PredictorDep, RequestIdDep, SettingsDep
from app.errors import ServiceError, TooManyFilesError
from app.overlay import render_overlay_png
from app.settings import Settings

router = APIRouter(prefix="/v1", tags=["predict"])

ERROR_RESPONSES: dict[int | str, dict] = {
    status: {"model": schemas.ErrorResponse, "description": description}
    for status, description in (
        (400, "empty, undecodable or invalid image"),
        (413, "file, image or request too large"),
        (415, "not a PNG, JPEG or TIFF (judged by the magic bytes)"),
        (422, "missing or malformed field"),
        (503, "models not ready, or the inference queue is full"),
    )
}
SliceFile = Annotated[UploadFile, File(description="one MRI slice: PNG, JPEG or TIFF (8 or 16 bit, grey or RGB)")]
MaskFormatQuery = Annotated[schemas.MaskFormat, Query(description="mask encodings to return")]


async def read_upload(upload: UploadFile, settings: Settings) -> bytes:
    """Read a file part, at most one byte past the per-file limit (so an oversized file is never read whole)."""
    data = await upload.read(settings.max_upload_bytes + 1)
    limits = pipeline.UploadLimits.from_settings(settings)
    pipeline.check_upload_size(len(data), limits, complete=len(data) <= settings.max_upload_bytes)
    return data


@router.post("/predict", response_model=schemas.PredictionResponse, responses=ERROR_RESPONSES)
async def create_prediction(
    request: Request,
    file: SliceFile,
    batcher: BatcherDep,
    predictor: PredictorDep,
    settings: SettingsDep,
    metrics: MetricsDep,
    request_id: RequestIdDep,
    mask_format: MaskFormatQuery = schemas.MaskFormat.RLE,
) -> schemas.PredictionResponse:
    """Tumor probability of one slice, and its mask when a tumor is detected."""
    data = await read_upload(file, settings)
    request.state.input_sha256 = pipeline.sha256_hex(data)
    prepared = await run_in_threadpool(pipeline.prepare_upload, data, pipeline.UploadLimits.from_settings(settings))
    (prediction,) = await batcher.submit(
        prepared.model_input[None], [prepared.size], timeout_seconds=settings.request_timeout_seconds
    )
    metrics.record_predictions([prediction.detected])
    request.state.outcome = {"tumor_detected": prediction.detected}
    payload = await run_in_threadpool(pipeline.slice_payload, prediction, predictor.classifier_threshold, mask_format)
    return schemas.PredictionResponse(
        **dict(payload), models=schemas.ModelTags(**predictor.model_tags), request_id=request_id
    )


@router.post("/predict/batch", response_model=schemas.BatchPredictionResponse, responses=ERROR_RESPONSES)
async def create_batch_prediction(
    request: Request,
    files: Annotated[list[UploadFile], File(description="slices of one series, in order")],
    batcher: BatcherDep,
    predictor: PredictorDep,
    settings: SettingsDep,
    metrics: MetricsDep,
    request_id: RequestIdDep,
    mask_format: MaskFormatQuery = schemas.MaskFormat.RLE,
) -> schemas.BatchPredictionResponse:
    """Predict several slices in one request; a bad file gets its own error and does not fail the others."""
    if len(files) > settings.max_batch_files:
        raise TooManyFilesError(f"a batch may hold at most {settings.max_batch_files} files; got {len(files)}")
    uploads: list[bytes | ServiceError] = []
    for upload in files:
        try:
            uploads.append(await read_upload(upload, settings))
        except ServiceError as error:
            uploads.append(error)
    request.state.input_sha256 = [pipeline.sha256_hex(item) for item in uploads if isinstance(item, bytes)]
    limits = pipeline.UploadLimits.from_settings(settings)
    prepared = await run_in_threadpool(pipeline.prepare_uploads, uploads, limits)
    decoded = [item for item in prepared if isinstance(item, pipeline.PreparedSlice)]
    predictions = (
        await batcher.submit(*pipeline.stack_inputs(decoded), timeout_seconds=settings.request_timeout_seconds)
        if decoded
        else []
    )
    metrics.record_predictions(prediction.detected for prediction in predictions)
    positives = sum(prediction.detected for prediction in predictions)
    request.state.outcome = {
        "positive": positives,
        "negative": len(predictions) - positives,
        "failed": len(prepared) - len(predictions),
    }
    outcomes = await run_in_threadpool(
        pipeline.payloads,
        pipeline.in_request_order(prepared, predictions),
        predictor.classifier_threshold,
        mask_format,
    )
    results: list[schemas.BatchItemSuccess | schemas.BatchItemFailure] = [
        schemas.BatchItemFailure(index=index, error=schemas.ErrorDetail(**outcome.to_dict()))
        if isinstance(outcome, ServiceError)
        else schemas.BatchItemSuccess(index=index, prediction=outcome)
        for index, outcome in enumerate(outcomes)
    ]
    return schemas.BatchPredictionResponse(
        results=results, models=schemas.ModelTags(**predictor.model_tags), request_id=request_id
    )


@router.post(
    "/overlay",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}, "description": "the slice with the tumor outline"}}
    | ERROR_RESPONSES,
)
async def create_overlay(
    request: Request,
    file: SliceFile,
    batcher: BatcherDep,
    settings: SettingsDep,
    metrics: MetricsDep,
) -> Response:
    """PNG of the slice with the predicted tumor outline drawn in green, for people to look at."""
    data = await read_upload(file, settings)
    request.state.input_sha256 = pipeline.sha256_hex(data)
    limits = pipeline.UploadLimits.from_settings(settings)
    prepared = await run_in_threadpool(pipeline.prepare_upload, data, limits, True)
    (prediction,) = await batcher.submit(
        prepared.model_input[None], [prepared.size], timeout_seconds=settings.request_timeout_seconds
    )
    metrics.record_predictions([prediction.detected])
    request.state.outcome = {"tumor_detected": prediction.detected}
    png = await run_in_threadpool(render_overlay_png, prepared.image, prediction.mask)
    headers = {
        "X-Tumor-Probability": f"{prediction.probability:.6f}",
        "X-Tumor-Detected": str(prediction.detected).lower(),
    }
    return Response(png, media_type="image/png", headers=headers)
