"""Liveness, readiness and Prometheus metrics: for orchestrators and monitoring. The probes are never behind an API
key; /metrics is when the server has API keys (as the README says), and says so in the OpenAPI document."""

from __future__ import annotations

from fastapi import APIRouter, Request, Security
from fastapi.responses import Response

from app import schemas
from app.api.deps import MetricsDep, get_predictor
from app.api.openapi_docs import (
    OPTIONAL_API_KEY,
    READ_STATUSES,
    REQUEST_ID_HEADERS,
    SERVER_RESPONSES,
    UNKNOWN_QUERY_RESPONSE,
    document_api_key,
    error_responses,
)
from app.api.request_fields import query_parameters

router = APIRouter(tags=["health"], responses=SERVER_RESPONSES)


@router.get(
    "/health/live",
    dependencies=[query_parameters()],
    response_model=schemas.HealthStatus,
    responses=UNKNOWN_QUERY_RESPONSE | {200: {"headers": REQUEST_ID_HEADERS}},
)
async def read_liveness() -> schemas.HealthStatus:
    """200 while the process serves requests, also during model loading."""
    return schemas.HealthStatus(status="alive")


@router.get(
    "/health/ready",
    dependencies=[query_parameters()],
    response_model=schemas.HealthStatus,
    responses=UNKNOWN_QUERY_RESPONSE
    | {200: {"headers": REQUEST_ID_HEADERS}}
    | error_responses(503, only={"model_unavailable", "audit_unavailable", "too_many_connections"}),
)
async def read_readiness(request: Request) -> schemas.HealthStatus:
    """200 once both models are loaded and warmed up; 503 `model_unavailable` before (or if loading failed), and
    `audit_unavailable` while the audit log cannot be written (its records would be lost): the answer the inference
    routes give then too (`get_predictor`)."""
    await get_predictor(request)
    return schemas.HealthStatus(status="ready")


@router.get(
    "/metrics",
    dependencies=[Security(document_api_key)],
    openapi_extra=OPTIONAL_API_KEY,
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "headers": REQUEST_ID_HEADERS}} | error_responses(*READ_STATUSES),
)
async def read_metrics(metrics: MetricsDep) -> Response:
    """Prometheus exposition: requests and latency by endpoint and status, model run times, positives, queue."""
    body, content_type = metrics.render()
    return Response(body, media_type=content_type)
