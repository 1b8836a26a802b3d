"""Liveness, readiness and Prometheus metrics: for orchestrators and monitoring, never behind an API key."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from app import schemas
from app.api.deps import MetricsDep, get_predictor
from app.api.request_fields import query_parameters

router = APIRouter(tags=["health"])


@router.get("/health/live", dependencies=[query_parameters()], response_model=schemas.HealthStatus)
async def read_liveness() -> schemas.HealthStatus:
    """200 while the process serves requests, also during model loading."""
    return schemas.HealthStatus(status="alive")


@router.get(
    "/health/ready",
    dependencies=[query_parameters()],
    response_model=schemas.HealthStatus,
    responses={
        503: {"model": schemas.ErrorResponse, "description": "models not loaded and warm yet, or audit log unwritable"}
    },
)
async def read_readiness(request: Request) -> schemas.HealthStatus:
    """200 once both models are loaded and warmed up; 503 `model_unavailable` before (or if loading failed), and
    `audit_unavailable` while the audit log cannot be written (its records would be lost): the answer the inference
    routes give then too (`get_predictor`)."""
    await get_predictor(request)
    return schemas.HealthStatus(status="ready")


@router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
async def read_metrics(metrics: MetricsDep) -> Response:
    """Prometheus exposition: requests and latency by endpoint and status, model run times, positives, queue."""
    body, content_type = metrics.render()
    return Response(body, media_type=content_type)
