"""POST /v1/predict, /v1/predict/batch and /v1/overlay: slices in, tumor probability and mask out.

Each handler parses the request, makes one call to the prediction flow (`app.prediction.PredictionService`) and
shapes its answer into the response. The call is cancelled when the client disconnects first
(`app.api.disconnect.unless_client_gone`): a queued batch nobody will read must not take the models' time.

PNG, JPEG and TIFF files are slices of their own. DICOM files (recognised by their `DICM` marker) are read as a series:
every frame is a slice; sequence selection chooses the FLAIR series and, when both are there, the pre- and
post-contrast T1 series by their names and attributes (never by upload order), and the answer says which series it
used. With `output=dicom-seg` (or `Accept: application/dicom`) the answer is a DICOM Segmentation instead of JSON,
with `output=dicom-sr` the volume report, with `output=dicom-seg-sr` (or `Accept: multipart/related;
type="application/dicom"`) both as a DICOMweb multipart answer.
"""

from __future__ import annotations

from functools import partial
from typing import Annotated

from fastapi import APIRouter, File, Query, Request, Security, UploadFile
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from app import payloads, schemas, uploads
from app.api.content_negotiation import (
    DICOM_MEDIA_TYPE,
    MULTIPART_MEDIA_TYPE,
    requested_outputs,
    servable_output,
    wants_segmentation,
)
from app.api.deps import PredictionServiceDep, PredictorDep, RequestIdDep, SettingsDep
from app.api.disconnect import unless_client_gone
from app.api.openapi_docs import (
    BINARY_CONTENT,
    BINARY_UPLOAD,
    BOOLEAN_HEADER,
    COUNT_HEADER,
    OPTIONAL_API_KEY,
    PREDICTION_STATUSES,
    REQUEST_ID_HEADERS,
    SERVER_RESPONSES,
    document_api_key,
    error_responses,
    response_examples,
)
from app.api.request_fields import check_file_fields, query_parameters
from app.dicom.dicom_header import DICOM_SIGNATURE_BYTES, is_dicom
from app.dicom.dicom_seg import part10_bytes
from app.dicom.dicom_sr import seg_refused_note, series_volume_report
from app.errors import (
    RequestValidationFailed,
    ServiceError,
    TooManyFilesError,
    UnsupportedMediaTypeError,
)
from app.multipart_related import multipart_related
from app.prediction import SeriesAnswer, SliceAnswer, Tally, no_image_error
from app.raster_series_order import file_name_order_note

router = APIRouter(
    prefix="/v1", tags=["predict"], dependencies=[Security(document_api_key)], responses=SERVER_RESPONSES
)

ERROR_RESPONSES = error_responses(*PREDICTION_STATUSES)
# The headers of a 200 (`series_headers`, `mark_json_instead_of_dicom`): a DICOM answer has no JSON to carry them.
DICOM_ANSWER_HEADERS = REQUEST_ID_HEADERS | {
    "X-Tumor-Detected": {
        "description": "the decision, on DICOM answers and on the JSON that answers a DICOM request without tumor",
        "schema": BOOLEAN_HEADER,
    },
    "X-Tumor-Volume-mL": {
        "description": "DICOM answers: the tumor volume (mL, 3 decimals), when the series gives one",
        "schema": {"type": "number", "minimum": 0},
    },
    "X-Slices-Missing": {
        "description": "DICOM answers: slices missing inside the series (the volume may fall short), or `unknown` "
        "(no positions to tell)",
        "schema": {"anyOf": [COUNT_HEADER, {"type": "string", "enum": ["unknown"]}]},
    },
    "X-Tumor-Reaches-Series-End": {
        "description": "DICOM answers: the tumor touches the first or last slice (it may go on beyond the series)",
        "schema": BOOLEAN_HEADER,
    },
    "X-Files-Skipped": {"description": "DICOM answers: files that could not be read", "schema": COUNT_HEADER},
    "X-Skipped-File-Indices": {
        "description": "DICOM answers with skipped files: their positions in the request, comma-separated",
        "schema": {"type": "string", "pattern": "^[0-9]+(,[0-9]+)*$"},
    },
    "X-Series-Used": {
        "description": "DICOM answers: the series the models read, as role=series number (`FLAIR=3`), comma-separated",
        "schema": {"type": "string"},
    },
    "X-Files-Left-Out": {
        "description": "DICOM answers: files of other series (or copies) that were not read",
        "schema": COUNT_HEADER,
    },
}
OVERLAY_HEADERS = REQUEST_ID_HEADERS | {
    "X-Tumor-Probability": {
        "description": "the classifier's tumor probability (6 decimals)",
        "schema": {"type": "number", "minimum": 0, "maximum": 1},
    },
    "X-Tumor-Detected": {"description": "the decision", "schema": BOOLEAN_HEADER},
}
PREDICT_EXAMPLES: dict[int | str, dict] = {
    200: {
        "content": {
            DICOM_MEDIA_TYPE: BINARY_CONTENT,
            **response_examples(
                predict_tumor="tests/data/lgg/.../TCGA_DU_A5TW_19980228_22.jpg: tumor, mask as COCO RLE",
                predict_tumor_free="tests/data/lgg/.../TCGA_DU_A5TW_19980228_8.jpg: no tumor, no mask",
            ),
        },
        "description": "JSON, or for a DICOM slice a DICOM SEG with output=dicom-seg (or Accept: application/dicom). "
        "No SEG is made of a slice without tumor: that answer is the JSON, with X-Tumor-Detected: false, so check "
        "Content-Type before storing the body as a DICOM file",
        "headers": DICOM_ANSWER_HEADERS,
    }
}
BATCH_EXAMPLES: dict[int | str, dict] = {
    200: {
        "content": {
            DICOM_MEDIA_TYPE: BINARY_CONTENT,
            f'{MULTIPART_MEDIA_TYPE}; type="{DICOM_MEDIA_TYPE}"': BINARY_CONTENT,
            **response_examples(
                batch="a JPEG slice and a text file: one result per file, the bad one with its own error",
                series="three DICOM instances of one series: a result per slice and the tumor volume",
            ),
        },
        "description": "JSON (per file for PNG/JPEG/TIFF, per slice for DICOM, with the series used), a DICOM SEG "
        "with output=dicom-seg (slices without a Frame of Reference, such as Secondary Captures: one SEG per positive "
        "slice, as multipart/related), the SR with output=dicom-sr, or both as multipart/related with "
        "output=dicom-seg-sr. No SEG is made of a series without tumor: output=dicom-seg (or Accept: "
        "application/dicom) is answered with the JSON then, with X-Tumor-Detected: false",
        "headers": DICOM_ANSWER_HEADERS,
    }
}
SliceFile = Annotated[
    UploadFile,
    File(
        description="one MRI slice: PNG, JPEG, TIFF (8 or 16 bit; TIFF also 32-bit or float; grey or RGB) or DICOM",
        json_schema_extra=BINARY_UPLOAD,
    ),
]
SeriesFiles = Annotated[
    list[UploadFile],
    File(
        description="slices of one series, in order",
        # FastAPI writes the items' schema; this one replaces it whole, so it repeats FastAPI's media type.
        json_schema_extra={
            "items": {"type": "string", "contentMediaType": "application/octet-stream", **BINARY_UPLOAD}
        },
    ),
]
MaskFormatQuery = Annotated[schemas.MaskFormat, Query(description="mask encodings to return")]
# The handlers read Accept from the request: declared as a header parameter it would be ignored by OpenAPI tools,
# which must skip one named Accept (OpenAPI 3.1). This description and the 200's media types tell it.
OutputQuery = Annotated[
    schemas.OutputFormat,
    Query(
        description="json; dicom-seg for a DICOM Segmentation (when a tumor is found: else the answer is the JSON, "
        "with X-Tumor-Detected: false); dicom-sr (batch only) for the series' DICOM SR volume "
        "report, also when no tumor is found; dicom-seg-sr (batch only) for both as multipart/related "
        "(type application/dicom: the SEG, then the SR; the SR alone when no tumor is found) (DICOM input only). "
        "Slices without a Frame of Reference (Secondary Captures) get one SEG per positive slice: several SEGs "
        "come as multipart/related. With output=json (the default) the Accept header chooses instead: "
        'application/dicom asks for a DICOM SEG, multipart/related; type="application/dicom" for the SEG and the SR '
        "(batch only); anything else, or a DICOM answer this input cannot have, gets JSON (never 406)"
    ),
]
SeriesQuery = Annotated[
    bool,
    Query(
        description="PNG/JPEG/TIFF files are the slices of one volume, in order: masks get the series clean-up "
        "(3-D blobs too small to be tumor are dropped). DICOM files are always treated as one series."
    ),
]


IDENTITY_TRANSFER_ENCODINGS = frozenset({"7bit", "8bit", "binary"})
"""Content-Transfer-Encoding values that leave a part's bytes as they are (some older clients still send `binary`)."""


def check_transfer_encoding(upload: UploadFile) -> None:
    """Refuse a file part whose bytes are encoded (base64, quoted-printable): nothing here decodes them, so they would
    be read as the file and refused as "text" or worse, without naming the header. RFC 7578 4.7:
    senders must not use Content-Transfer-Encoding in multipart/form-data."""
    encoding = upload.headers.get("content-transfer-encoding")
    if encoding is not None and encoding.strip().lower() not in IDENTITY_TRANSFER_ENCODINGS:
        raise UnsupportedMediaTypeError(
            f"the file part has Content-Transfer-Encoding: {encoding.strip()[:64]}, which this service does not "
            "decode (RFC 7578 4.7: multipart/form-data parts must not use it); send the file's bytes as they are"
        )


async def read_upload(upload: UploadFile, limits: uploads.UploadLimits) -> bytes:
    """Read a file part, at most one byte past the per-file limit (so an oversized file is never read whole).

    `limits` are the service's (`PredictionService.limits`), not built again for every file part."""
    check_transfer_encoding(upload)
    data = await upload.read(limits.max_upload_bytes + 1)
    uploads.check_upload_size(len(data), limits, complete=len(data) <= limits.max_upload_bytes)
    return data


@router.post(
    "/predict",
    dependencies=[query_parameters("mask_format", "output")],
    openapi_extra=OPTIONAL_API_KEY,
    response_model=schemas.PredictionResponse,
    responses=ERROR_RESPONSES | PREDICT_EXAMPLES,
)
async def create_prediction(
    request: Request,
    response: Response,
    file: SliceFile,
    service: PredictionServiceDep,
    predictor: PredictorDep,
    request_id: RequestIdDep,
    mask_format: MaskFormatQuery = schemas.MaskFormat.RLE,
    output: OutputQuery = schemas.OutputFormat.JSON,
) -> schemas.PredictionResponse | Response:
    """Tumor probability of one slice, and its mask when a tumor is detected."""
    if output.whole_series_only:
        raise RequestValidationFailed(
            f"query.output: {output.value} reports on a whole series; send it to /v1/predict/batch"
        )
    choices = requested_outputs(output, request.headers.get("accept"))
    await check_file_fields(request, "file")
    data = await read_upload(file, service.limits)
    request.state.input_sha256 = uploads.sha256_hex(data)
    output = servable_output(choices, is_dicom(data[:DICOM_SIGNATURE_BYTES]), series=False)
    answer = await unless_client_gone(
        request,
        service.predict_slice(data, segmentation=wants_segmentation(output), on_tally=partial(record_outcome, request)),
    )
    if isinstance(answer, SeriesAnswer):
        return await run_in_threadpool(segmentation_response, answer)
    payload = await encode_slice_payload(answer, predictor.classifier_threshold, mask_format)
    if wants_segmentation(output):
        mark_json_instead_of_dicom(response, payload.tumor_detected)
    return schemas.PredictionResponse(
        **dict(payload), models=schemas.ModelTags(**predictor.model_tags), request_id=request_id
    )


@router.post(
    "/predict/batch",
    dependencies=[query_parameters("mask_format", "output", "series")],
    openapi_extra=OPTIONAL_API_KEY,
    response_model=schemas.BatchPredictionResponse | schemas.SeriesPredictionResponse,
    responses=ERROR_RESPONSES | BATCH_EXAMPLES,
)
async def create_batch_prediction(
    request: Request,
    response: Response,
    files: SeriesFiles,
    service: PredictionServiceDep,
    predictor: PredictorDep,
    settings: SettingsDep,
    request_id: RequestIdDep,
    mask_format: MaskFormatQuery = schemas.MaskFormat.RLE,
    output: OutputQuery = schemas.OutputFormat.JSON,
    series: SeriesQuery = False,
) -> schemas.BatchPredictionResponse | schemas.SeriesPredictionResponse | Response:
    """Predict several slices in one request; a bad file gets its own error and does not fail the others.

    PNG/JPEG/TIFF files give one result per file. DICOM files give one result per slice of the series, the tumor
    volume, and with `output=dicom-seg` one multi-frame DICOM SEG for the whole series (slices without a Frame of
    Reference: one SEG per positive slice, as multipart/related).
    """
    await check_file_fields(request, "files", several=True)
    if len(files) > settings.max_batch_files:
        raise TooManyFilesError(
            f"a batch may hold at most {settings.max_batch_files} files (MAX_BATCH_FILES); got {len(files)}"
        )
    contents: list[bytes | ServiceError] = []
    for upload in files:
        try:
            contents.append(await read_upload(upload, service.limits))
        except ServiceError as error:
            contents.append(error)
    request.state.input_sha256 = [uploads.sha256_hex(item) for item in contents if isinstance(item, bytes)]
    errors = [no_image_error(item) for item in contents]
    images = [item for item, error in zip(contents, errors, strict=True) if error is None and isinstance(item, bytes)]
    dicom_input = any(is_dicom(item[:DICOM_SIGNATURE_BYTES]) for item in images)
    choices = requested_outputs(output, request.headers.get("accept"))
    if not images and schemas.OutputFormat.JSON not in choices:
        # No file to make a SEG or SR of: the first file's own reason (too large, empty ...), not "needs DICOM".
        raise next(error for error in errors if error is not None)
    output = servable_output(choices, dicom_input, series=True)
    work = service.predict_files(
        contents,
        mask_format,
        wants_segmentation(output),
        on_tally=partial(record_outcome, request),
        series=series,
        # The report alone is made without a SEG the sources cannot give, saying why, as the DICOM node and
        # pacs-sync make it (interop review 63 F7: a series no SEG can cover got no report at all over HTTP).
        seg_optional=output is schemas.OutputFormat.DICOM_SR,
    )
    answer = await unless_client_gone(request, work)
    models = schemas.ModelTags(**predictor.model_tags)
    if isinstance(answer, SeriesAnswer) and output is schemas.OutputFormat.DICOM_SR:
        return await run_in_threadpool(report_response, answer, predictor.model_tags)
    if isinstance(answer, SeriesAnswer) and output is schemas.OutputFormat.DICOM_SEG_SR:
        return await run_in_threadpool(segmentation_and_report_response, answer, predictor.model_tags)
    if isinstance(answer, SeriesAnswer) and answer.slices is None:
        return await run_in_threadpool(segmentation_response, answer)
    if isinstance(answer, SeriesAnswer):
        if wants_segmentation(output):
            mark_json_instead_of_dicom(response, answer.result.tumor_detected)
        return schemas.SeriesPredictionResponse(
            **payloads.series_summary(answer.result, answer.choice),
            threshold=predictor.classifier_threshold,
            slices=answer.slices,
            file_errors=payloads.file_failures(answer.file_errors),
            models=models,
            request_id=request_id,
        )
    results: list[schemas.BatchItemSuccess | schemas.BatchItemFailure] = [
        schemas.BatchItemFailure(index=index, error=schemas.ErrorDetail(**outcome.to_dict()))
        if isinstance(outcome, ServiceError)
        else schemas.BatchItemSuccess(index=index, prediction=outcome)
        for index, outcome in enumerate(answer.outcomes)
    ]
    order_note = file_name_order_note([upload.filename for upload in files]) if series else None
    return schemas.BatchPredictionResponse(
        results=results, notes=[order_note] if order_note else [], models=models, request_id=request_id
    )


@router.post(
    "/overlay",
    dependencies=[query_parameters()],
    openapi_extra=OPTIONAL_API_KEY,
    response_class=Response,
    responses={
        200: {
            "content": {"image/png": BINARY_CONTENT},
            "description": "the slice with the tumor outline",
            "headers": OVERLAY_HEADERS,
        }
    }
    | ERROR_RESPONSES,
)
async def create_overlay(request: Request, file: SliceFile, service: PredictionServiceDep) -> Response:
    """PNG of the slice with the predicted tumor outline drawn in green, for people to look at."""
    await check_file_fields(request, "file")
    data = await read_upload(file, service.limits)
    request.state.input_sha256 = uploads.sha256_hex(data)
    answer = await unless_client_gone(request, service.overlay(data, on_tally=partial(record_outcome, request)))
    headers = {
        "X-Tumor-Probability": f"{answer.prediction.probability:.6f}",
        "X-Tumor-Detected": str(answer.prediction.detected).lower(),
    }
    return Response(answer.png, media_type="image/png", headers=headers)


async def encode_slice_payload(
    answer: SliceAnswer, threshold: float, mask_format: schemas.MaskFormat
) -> schemas.Prediction:
    """`payloads.slice_payload`, a small mask encoded here, a large one in a worker thread (off the event loop)."""
    if payloads.encodes_quickly(answer.prediction):
        return payloads.slice_payload(answer.prediction, threshold, mask_format)
    return await run_in_threadpool(payloads.slice_payload, answer.prediction, threshold, mask_format)


def mark_json_instead_of_dicom(response: Response, tumor_detected: bool) -> None:
    """A DICOM answer was asked for and none made (no SEG of a slice or series without tumor): the JSON goes out
    with `X-Tumor-Detected`, as a SEG would, so a client that files the body as DICOM has a header to check besides
    Content-Type."""
    response.headers["X-Tumor-Detected"] = str(tumor_detected).lower()


def segmentation_response(answer: SeriesAnswer) -> Response:
    """The series' SEG; the SEGs as parts of one multipart/related answer (DICOMweb) when its slices have no Frame
    of Reference and each positive one got its own (`app.dicom.dicom_seg.build_segmentations`)."""
    segmentations = [part10_bytes(segmentation) for segmentation in answer.result.segmentations]
    if len(segmentations) == 1:
        return Response(segmentations[0], media_type=DICOM_MEDIA_TYPE, headers=series_headers(answer))
    body, media_type = multipart_related(segmentations, DICOM_MEDIA_TYPE)
    return Response(body, headers={"Content-Type": media_type, **series_headers(answer)})


def report_response(answer: SeriesAnswer, model_tags: dict[str, str]) -> Response:
    """The series' DICOM SR volume report (TID 1500), referencing its SEGs when a tumor was found, or saying why none
    could be made (`SeriesAnswer.segmentation_refused`)."""
    notes, refused = list(answer.choice.notes), answer.segmentation_refused
    if refused and answer.result.tumor_detected:
        notes.append(seg_refused_note(refused))
    report = series_volume_report(answer.result, model_tags, notes, without_seg=bool(refused))
    body = part10_bytes(report)
    return Response(body, media_type=DICOM_MEDIA_TYPE, headers=series_headers(answer))


def segmentation_and_report_response(answer: SeriesAnswer, model_tags: dict[str, str]) -> Response:
    """The SEGs and the SR as parts of one multipart/related answer (DICOMweb), the SR last; the SR alone when no SEG
    was made (no tumor found)."""
    report = part10_bytes(series_volume_report(answer.result, model_tags, answer.choice.notes))
    parts = [*(part10_bytes(segmentation) for segmentation in answer.result.segmentations), report]
    body, media_type = multipart_related(parts, DICOM_MEDIA_TYPE)
    return Response(body, headers={"Content-Type": media_type, **series_headers(answer)})


def series_headers(answer: SeriesAnswer) -> dict[str, str]:
    """What a DICOM answer has no JSON body to carry: the decision, the volume and when it may fall short
    (`slices_missing`, `tumor_reaches_series_end`), files that failed (`file_errors`) and the series the models read
    (`series_used`; ASCII: roles and series numbers, never descriptions)."""
    headers = {
        "X-Tumor-Detected": str(answer.result.tumor_detected).lower(),
        "X-Slices-Missing": "unknown" if answer.result.slices_missing is None else str(answer.result.slices_missing),
        "X-Tumor-Reaches-Series-End": str(answer.result.tumor_reaches_series_end).lower(),
        "X-Files-Skipped": str(len(answer.file_errors)),
        "X-Series-Used": answer.choice.describe_used(),
        "X-Files-Left-Out": str(len(answer.choice.left_out_files)),
    }
    if answer.file_errors:
        headers["X-Skipped-File-Indices"] = ",".join(str(index) for index in sorted(answer.file_errors))
    if answer.result.tumor_volume_ml is not None:
        headers["X-Tumor-Volume-mL"] = f"{answer.result.tumor_volume_ml:.3f}"
    return headers


def record_outcome(request: Request, tally: Tally) -> None:
    """The outcome the audit log records for this request (the metrics are counted by the prediction flow)."""
    request.state.outcome = {"positive": tally.positive, "negative": tally.negative, "failed": tally.failed}
