"""GET /v1/models: what is being served."""

from __future__ import annotations

from fastapi import APIRouter, Security

from app import schemas
from app.api.deps import ManifestDep, SettingsDep
from app.api.openapi_docs import (
    OPTIONAL_API_KEY,
    READ_STATUSES,
    REQUEST_ID_HEADERS,
    SERVER_RESPONSES,
    UNKNOWN_QUERY_RESPONSE,
    document_api_key,
    error_responses,
    response_examples,
)
from app.api.request_fields import query_parameters

router = APIRouter(prefix="/v1", tags=["models"], dependencies=[Security(document_api_key)], responses=SERVER_RESPONSES)


@router.get(
    "/models",
    dependencies=[query_parameters()],
    openapi_extra=OPTIONAL_API_KEY,
    response_model=schemas.ModelsResponse,
    responses=error_responses(*READ_STATUSES)
    | UNKNOWN_QUERY_RESPONSE
    | {
        200: {
            "content": response_examples(models="the committed models"),
            "description": "what is being served",
            "headers": REQUEST_ID_HEADERS,
        }
    },
)
async def read_models(manifest: ManifestDep, settings: SettingsDep) -> schemas.ModelsResponse:
    """The manifest's public part (names, versions, thresholds, input shape, preprocessing and test metrics), the
    runtime that runs them (also while they load), the most files and bytes one batch may hold and the largest file."""
    return schemas.ModelsResponse.from_manifest(
        manifest,
        settings.inference_runtime,
        settings.max_batch_files,
        settings.max_upload_bytes,
        settings.max_batch_upload_bytes,
    )
