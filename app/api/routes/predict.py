"""POST /v1/predict, /v1/predict/batch and /v1/overlay: slices in, tumor probability and mask out.

PNG, JPEG and TIFF files are slices of their own. DICOM files (recognised by their `DICM` marker) are read as a series:
every frame is a slice, and three instances at one position are pre-contrast, FLAIR, post-contrast; with
`output=dicom-seg` (or `Accept: application/dicom`) the answer is a DICOM Segmentation instead of JSON.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Header, Query, Request, Security, UploadFile
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from app import dicom_series, pipeline, schemas
from app.api.deps import BatcherDep, MetricsDep, PredictorDep, RequestIdDep, SettingsDep
from app.api.openapi_docs import (
    OPTIONAL_API_KEY,
    PREDICTION_STATUSES,
    document_api_key,
    error_responses,
    response_examples,
)
from app.batching import MicroBatcher
from app.dicom_input import is_dicom
from app.dicom_seg import SeriesResult, segmentation_to_bytes, summarise_series
from app.errors import InvalidSliceError, RequestValidationFailed, ServiceError, TooManyFilesError
from app.inference import Predictor
from app.metrics import ServiceMetrics
from app.overlay import render_overlay_png
from app.settings import Settings

router = APIRouter(prefix="/v1", tags=["predict"], dependencies=[Security(document_api_key)])

DICOM_MEDIA_TYPE = "application/dicom"
ERROR_RESPONSES = error_responses(*PREDICTION_STATUSES)
PREDICT_EXAMPLES: dict[int | str, dict] = {
    200: {
        "content": {
            DICOM_MEDIA_TYPE: {},
            **response_examples(
                predict_tumor="tests/data/lgg/.../TCGA_DU_A5TW_19980228_22.jpg: tumor, mask as COCO RLE",
                predict_tumor_free="tests/data/lgg/.../TCGA_DU_A5TW_19980228_8.jpg: no tumor, no mask",
            ),
        },
        "description": "JSON, or a DICOM SEG with output=dicom-seg",
    }
}
BATCH_EXAMPLES: dict[int | str, dict] = {
    200: {
        "content": {
            DICOM_MEDIA_TYPE: {},
            **response_examples(
                batch="a JPEG slice and a text file: one result per file, the bad one with its own error",
                series="three DICOM instances of one series: a result per slice and the tumor volume",
            ),
        },
        "description": "JSON (per file for PNG/JPEG/TIFF, per slice for DICOM), or a DICOM SEG with output=dicom-seg",
    }
}
SliceFile = Annotated[
    UploadFile, File(description="one MRI slice: PNG, JPEG, TIFF (8 or 16 bit, grey or RGB) or DICOM")
]
MaskFormatQuery = Annotated[schemas.MaskFormat, Query(description="mask encodings to return")]
OutputQuery = Annotated[
    schemas.OutputFormat, Query(description="json, or dicom-seg for a DICOM Segmentation (DICOM input only)")
]
AcceptHeader = Annotated[str | None, Header(description="application/dicom asks for a DICOM SEG")]


async def read_upload(upload: UploadFile, settings: Settings) -> bytes:
    """Read a file part, at most one byte past the per-file limit (so an oversized file is never read whole)."""
    data = await upload.read(settings.max_upload_bytes + 1)
    limits = pipeline.UploadLimits.from_settings(settings)
    pipeline.check_upload_size(len(data), limits, complete=len(data) <= settings.max_upload_bytes)
    return data


async def refuse_several_files(request: Request) -> None:
    """One `file` part only: FastAPI would silently take the last of several, answering for a slice the client
    may not have meant."""
    count = len((await request.form()).getlist("file"))
    if count > 1:
        raise RequestValidationFailed(
            f"body.file: expected one file, got {count} (send several slices to /v1/predict/batch as `files`)"
        )


def wants_segmentation(output: schemas.OutputFormat, accept: str | None) -> bool:
    return output is schemas.OutputFormat.DICOM_SEG or DICOM_MEDIA_TYPE in (accept or "")


@router.post(
    "/predict",
    openapi_extra=OPTIONAL_API_KEY,
    response_model=schemas.PredictionResponse,
    responses=ERROR_RESPONSES | PREDICT_EXAMPLES,
)
async def create_prediction(
    request: Request,
    file: SliceFile,
    batcher: BatcherDep,
    predictor: PredictorDep,
    settings: SettingsDep,
    metrics: MetricsDep,
    request_id: RequestIdDep,
    mask_format: MaskFormatQuery = schemas.MaskFormat.RLE,
    output: OutputQuery = schemas.OutputFormat.JSON,
    accept: AcceptHeader = None,
) -> schemas.PredictionResponse | Response:
    """Tumor probability of one slice, and its mask when a tumor is detected."""
    await refuse_several_files(request)
    data = await read_upload(file, settings)
    request.state.input_sha256 = pipeline.sha256_hex(data)
    seg = wants_segmentation(output, accept)
    if is_dicom(data):
        result = await predict_series(request, [data], batcher, predictor, settings, metrics, seg)
        if seg and result.segmentation is not None:
            return await run_in_threadpool(segmentation_response, result)
        if len(result.predictions) != 1:
            raise InvalidSliceError(
                f"the DICOM file holds {len(result.predictions)} slices; send it to /v1/predict/batch for one "
                "result per slice, or ask for output=dicom-seg"
            )
        prediction = result.predictions[0]
    else:
        reject_segmentation_of_raster(seg)
        limits = pipeline.UploadLimits.from_settings(settings)
        prepared = await run_in_threadpool(pipeline.prepare_upload, data, limits)
        (prediction,) = await batcher.submit(
            prepared.model_input[None], [prepared.size], timeout_seconds=settings.request_timeout_seconds
        )
        record_outcome(request, metrics, [prediction.detected], failed=0)
    threshold = predictor.classifier_threshold
    if pipeline.encodes_quickly(prediction):
        payload = pipeline.slice_payload(prediction, threshold, mask_format)
    else:
        payload = await run_in_threadpool(pipeline.slice_payload, prediction, threshold, mask_format)
    return schemas.PredictionResponse(
        **dict(payload), models=schemas.ModelTags(**predictor.model_tags), request_id=request_id
    )


@router.post(
    "/predict/batch",
    openapi_extra=OPTIONAL_API_KEY,
    response_model=schemas.BatchPredictionResponse | schemas.SeriesPredictionResponse,
    responses=ERROR_RESPONSES | BATCH_EXAMPLES,
)
async def create_batch_prediction(
    request: Request,
    files: Annotated[list[UploadFile], File(description="slices of one series, in order")],
    batcher: BatcherDep,
    predictor: PredictorDep,
    settings: SettingsDep,
    metrics: MetricsDep,
    request_id: RequestIdDep,
    mask_format: MaskFormatQuery = schemas.MaskFormat.RLE,
    output: OutputQuery = schemas.OutputFormat.JSON,
    accept: AcceptHeader = None,
) -> schemas.BatchPredictionResponse | schemas.SeriesPredictionResponse | Response:
    """Predict several slices in one request; a bad file gets its own error and does not fail the others.

    PNG/JPEG/TIFF files give one result per file. DICOM files give one result per slice of the series, the tumor
    volume, and with `output=dicom-seg` one multi-frame DICOM SEG for the whole series.
    """
    if len(files) > settings.max_batch_files:
        raise TooManyFilesError(f"a batch may hold at most {settings.max_batch_files} files; got {len(files)}")
    uploads: list[bytes | ServiceError] = []
    for upload in files:
        try:
            uploads.append(await read_upload(upload, settings))
        except ServiceError as error:
            uploads.append(error)
    readable = [item for item in uploads if isinstance(item, bytes)]
    request.state.input_sha256 = [pipeline.sha256_hex(item) for item in readable]
    models = schemas.ModelTags(**predictor.model_tags)
    seg = wants_segmentation(output, accept)
    dicom_count = sum(is_dicom(item) for item in readable)
    if dicom_count:
        if dicom_count != len(readable):
            raise dicom_series.MixedInputError(
                f"a batch must hold either DICOM files or PNG/JPEG/TIFF images; got {dicom_count} DICOM and "
                f"{len(readable) - dicom_count} other files"
            )
        series = await run_in_threadpool(dicom_series.read_series, uploads, settings.max_dicom_pixels)
        result = await run_series(request, series, batcher, predictor, settings, metrics, seg)
        if seg and result.segmentation is not None:
            return await run_in_threadpool(segmentation_response, result)
        return await run_in_threadpool(
            dicom_series.series_payload,
            result,
            series.file_errors,
            predictor.classifier_threshold,
            mask_format,
            models,
            request_id,
        )

    reject_segmentation_of_raster(seg)
    limits = pipeline.UploadLimits.from_settings(settings)
    prepared = await run_in_threadpool(pipeline.prepare_uploads, uploads, limits)
    decoded = [item for item in prepared if isinstance(item, pipeline.PreparedSlice)]
    predictions = (
        await batcher.submit(*pipeline.stack_inputs(decoded), timeout_seconds=settings.request_timeout_seconds)
        if decoded
        else []
    )
    record_outcome(request, metrics, [p.detected for p in predictions], failed=len(prepared) - len(predictions))
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
    return schemas.BatchPredictionResponse(results=results, models=models, request_id=request_id)


@router.post(
    "/overlay",
    openapi_extra=OPTIONAL_API_KEY,
    response_class=Response,
    responses={200: {"content": {"image/png": {}}, "description": "the slice with the tumor outline"}}
    | ERROR_RESPONSES,
)
async def create_overlay(
    request: Request,
    file: SliceFile,
    batcher: BatcherDep,
    predictor: PredictorDep,
    settings: SettingsDep,
    metrics: MetricsDep,
) -> Response:
    """PNG of the slice with the predicted tumor outline drawn in green, for people to look at."""
    await refuse_several_files(request)
    data = await read_upload(file, settings)
    request.state.input_sha256 = pipeline.sha256_hex(data)
    if is_dicom(data):
        result = await predict_series(request, [data], batcher, predictor, settings, metrics, build_seg=False)
        if len(result.predictions) != 1:
            raise InvalidSliceError(f"the DICOM file holds {len(result.predictions)} slices; an overlay shows one")
        image, prediction = result.inputs[0].image, result.predictions[0]
    else:
        limits = pipeline.UploadLimits.from_settings(settings)
        prepared = await run_in_threadpool(pipeline.prepare_upload, data, limits, True)
        (prediction,) = await batcher.submit(
            prepared.model_input[None], [prepared.size], timeout_seconds=settings.request_timeout_seconds
        )
        record_outcome(request, metrics, [prediction.detected], failed=0)
        image = prepared.image
    png = await run_in_threadpool(render_overlay_png, image, prediction.mask)
    headers = {
        "X-Tumor-Probability": f"{prediction.probability:.6f}",
        "X-Tumor-Detected": str(prediction.detected).lower(),
    }
    return Response(png, media_type="image/png", headers=headers)


async def predict_series(
    request: Request,
    uploads: list[bytes | ServiceError],
    batcher: MicroBatcher,
    predictor: Predictor,
    settings: Settings,
    metrics: ServiceMetrics,
    build_seg: bool,
) -> SeriesResult:
    """Read DICOM uploads as a series; a file that cannot be read fails the request (it is the only file)."""
    series = await run_in_threadpool(dicom_series.read_series, uploads, settings.max_dicom_pixels)
    if series.file_errors:
        raise next(iter(series.file_errors.values()))
    return await run_series(request, series, batcher, predictor, settings, metrics, build_seg)


async def run_series(
    request: Request,
    series: dicom_series.SeriesUploads,
    batcher: MicroBatcher,
    predictor: Predictor,
    settings: Settings,
    metrics: ServiceMetrics,
    build_seg: bool,
) -> SeriesResult:
    """The models on every slice (through the micro-batcher), then the SEG and the volume off the event loop."""
    predictions = []
    if series.inputs:
        batch, sizes = await run_in_threadpool(dicom_series.model_inputs, series.inputs)
        predictions = await batcher.submit(batch, sizes, timeout_seconds=settings.request_timeout_seconds)
    record_outcome(request, metrics, [p.detected for p in predictions], failed=len(series.file_errors))
    return await run_in_threadpool(summarise_series, series.inputs, predictions, predictor.model_tags, build_seg)


def segmentation_response(result: SeriesResult) -> Response:
    body = segmentation_to_bytes(result.segmentation)
    headers = {"X-Tumor-Detected": "true"}
    if result.tumor_volume_ml is not None:
        headers["X-Tumor-Volume-mL"] = f"{result.tumor_volume_ml:.3f}"
    return Response(body, media_type=DICOM_MEDIA_TYPE, headers=headers)


def reject_segmentation_of_raster(wants_seg: bool) -> None:
    if wants_seg:
        raise InvalidSliceError(
            "output=dicom-seg needs DICOM input: a DICOM SEG must reference the DICOM instances it segments"
        )


def record_outcome(request: Request, metrics: ServiceMetrics, detected: list[bool], failed: int) -> None:
    """Prediction counters, and the outcome the audit log records for this request."""
    metrics.record_predictions(detected)
    positives = sum(detected)
    request.state.outcome = {"positive": positives, "negative": len(detected) - positives, "failed": failed}
