"""Dependencies that routes declare as `Annotated` aliases; everything comes from `app.state`, set up by `create_app`
and its lifespan."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.errors import ModelUnavailableError
from app.inference import Predictor
from app.metrics import ServiceMetrics
from app.settings import Settings


def get_app_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_predictor(request: Request) -> Predictor:
    predictor = request.app.state.predictor
    if predictor is None or not request.app.state.ready:
        raise ModelUnavailableError("the models are not loaded yet; retry when GET /health/ready answers 200")
    return predictor


def get_metrics(request: Request) -> ServiceMetrics:
    return request.app.state.metrics


def get_request_id(request: Request) -> str:
    return request.state.request_id


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
PredictorDep = Annotated[Predictor, Depends(get_predictor)]
MetricsDep = Annotated[ServiceMetrics, Depends(get_metrics)]
RequestIdDep = Annotated[str, Depends(get_request_id)]
