"""`app.api.deps`: routes get the models and the prediction flow only once both are ready, else 503 with a reason."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from app.api import deps
from app.errors import ModelUnavailableError


def request_with(**state: object) -> SimpleNamespace:
    values = {"predictor": None, "ready": False, "load_error": None, "prediction_service": None} | state
    return SimpleNamespace(app=SimpleNamespace(state=SimpleNamespace(**values)), state=SimpleNamespace())


def test_get_predictor_before_loading_says_the_models_are_loading() -> None:
    with pytest.raises(ModelUnavailableError) as raised:
        asyncio.run(deps.get_predictor(request_with()))  # type: ignore[arg-type]

    assert raised.value.to_dict() == {
        "code": "model_unavailable",
        "message": "the models are still loading; retry in a few seconds "
        "(GET /health/ready answers 200 once they are ready)",
    }


def test_get_predictor_after_a_failed_load_points_to_the_log_without_its_details() -> None:
    with pytest.raises(ModelUnavailableError) as raised:
        asyncio.run(deps.get_predictor(request_with(load_error="sha256 mismatch for /srv/models/x.h5")))  # type: ignore[arg-type]

    assert raised.value.message == "the models failed to load (the server's log says why): fix them and restart"


def test_get_predictor_waits_for_the_warm_up() -> None:
    with pytest.raises(ModelUnavailableError):
        asyncio.run(deps.get_predictor(request_with(predictor=object(), ready=False)))  # type: ignore[arg-type]


def test_get_predictor_and_prediction_service_once_ready() -> None:
    predictor, service = object(), object()
    incoming = request_with(predictor=predictor, ready=True, prediction_service=service)

    assert asyncio.run(deps.get_predictor(incoming)) is predictor  # type: ignore[arg-type]
    assert asyncio.run(deps.get_prediction_service(incoming, predictor)) is service  # type: ignore[arg-type]


def test_get_request_id_reads_what_the_middleware_set() -> None:
    incoming = request_with()
    incoming.state.request_id = "abc"

    assert asyncio.run(deps.get_request_id(incoming)) == "abc"  # type: ignore[arg-type]
