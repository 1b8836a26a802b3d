"""Dependencies that routes declare as `Annotated` aliases; everything comes from `app.state`, set up by `create_app`
and its lifespan.

They are `async def` although they never await: FastAPI runs a plain `def` dependency in the thread pool, and these
only read an attribute, so a thread hop each (five per prediction) would cost far more than the work (measured with
py-spy under load: the hops were the largest part of the request overhead).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.core.model_store import Manifest
from app.errors import AuditUnavailableError, ModelUnavailableError
from app.inference import Predictor
from app.metrics import ServiceMetrics
from app.prediction import PredictionService
from app.settings import Settings

# Loading and warming the models takes seconds: a client told when to retry need not poll, and the page can say more
# than "not ready".
MODELS_LOADING_RETRY_SECONDS = 5
AUDIT_UNAVAILABLE = "the audit log cannot be written (AUDIT_LOG_FILE: disk full or unwritable)"
# A full disk waits for an operator or a log rotation, not for seconds: a retry every half minute does not keep a
# client polling, and finds the service again soon after.
AUDIT_UNAVAILABLE_RETRY_SECONDS = 30


async def get_app_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_predictor(request: Request) -> Predictor:
    """The loaded, warm models; 503 `model_unavailable` before that, and 503 `audit_unavailable` while the audit log
    cannot be written: an audited service answers no request it cannot record (else, with the disk full,
    uploads would be analysed and answered 200 with their records lost, only readiness saying so)."""
    state = request.app.state
    if state.load_error:
        # The reason (file paths, library messages) is in the server's log, not in answers anyone can read:
        # /health/ready takes no API key.
        raise ModelUnavailableError("the models failed to load (the server's log says why): fix them and restart")
    if state.predictor is None or not state.ready:
        raise ModelUnavailableError(
            "the models are still loading; retry in a few seconds (GET /health/ready answers 200 once they are ready)",
            retry_after_seconds=MODELS_LOADING_RETRY_SECONDS,
        )
    audit = getattr(state, "audit", None)
    if audit is not None and not audit.writable:
        raise AuditUnavailableError(AUDIT_UNAVAILABLE, retry_after_seconds=AUDIT_UNAVAILABLE_RETRY_SECONDS)
    return state.predictor


async def get_prediction_service(
    request: Request, _: Annotated[Predictor, Depends(get_predictor)]
) -> PredictionService:
    """The prediction flow over the loaded models (503 `model_unavailable` before they are ready)."""
    return request.app.state.prediction_service


async def get_manifest(request: Request) -> Manifest:
    return request.app.state.manifest


async def get_metrics(request: Request) -> ServiceMetrics:
    return request.app.state.metrics


async def get_request_id(request: Request) -> str:
    return request.state.request_id


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
PredictorDep = Annotated[Predictor, Depends(get_predictor)]
PredictionServiceDep = Annotated[PredictionService, Depends(get_prediction_service)]
ManifestDep = Annotated[Manifest, Depends(get_manifest)]
MetricsDep = Annotated[ServiceMetrics, Depends(get_metrics)]
RequestIdDep = Annotated[str, Depends(get_request_id)]
