"""GET /v1/models: what is being served."""

from __future__ import annotations

from fastapi import APIRouter

from app import schemas
from app.api.deps import ManifestDep

router = APIRouter(prefix="/v1", tags=["models"])


@router.get("/models", response_model=schemas.ModelsResponse)
async def read_models(manifest: ManifestDep) -> schemas.ModelsResponse:
    """The manifest's public part: names, versions, thresholds, input shape, preprocessing and test metrics."""
    return schemas.ModelsResponse.from_manifest(manifest)
