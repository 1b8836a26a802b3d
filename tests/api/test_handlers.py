"""`app.api.handlers`: every domain error has a row in the error catalogue (`app.api.openapi_docs.ERROR_CATALOGUE`,
the one table of codes), and becomes its status with the whole body."""

from __future__ import annotations

import asyncio
import json

import pytest
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request

from app import errors
from app.api import handlers
from app.api.openapi_docs import ERROR_CATALOGUE


def all_service_errors() -> list[type[errors.ServiceError]]:
    found, pending = [], [errors.ServiceError]
    while pending:
        cls = pending.pop()
        found.extend(cls.__subclasses__())
        pending.extend(cls.__subclasses__())
    return found


def code_table() -> dict[str, int]:
    return {entry.code: entry.status for entry in ERROR_CATALOGUE}


def request() -> Request:
    return Request({"type": "http", "method": "POST", "path": "/v1/predict", "headers": [], "state": {}})


def body_of(response) -> dict:
    return json.loads(response.body)


# file_unreadable is the CLI's, for a local path it cannot read: no HTTP answer carries it.
@pytest.mark.parametrize(
    "error_class", [cls for cls in all_service_errors() if cls.code != "file_unreadable"], ids=lambda cls: cls.code
)
def test_every_domain_error_has_its_status_in_the_code_table(error_class: type[errors.ServiceError]) -> None:
    assert code_table()[error_class.code] == handlers.STATUS_BY_KIND[error_class.kind]


def test_the_code_table_names_invalid_segmentation_input() -> None:
    assert code_table()["invalid_segmentation_input"] == 400


def test_handle_service_error_answers_the_whole_body_and_remembers_the_code() -> None:
    incoming = request()
    error = errors.SegmentationInputError("a DICOM SEG covers one series; the FLAIR slices come from 2 series")

    response = asyncio.run(handlers.handle_service_error(incoming, error))

    assert response.status_code == 400
    assert body_of(response) == {
        "error": {
            "code": "invalid_segmentation_input",
            "message": "a DICOM SEG covers one series; the FLAIR slices come from 2 series",
        }
    }
    assert incoming.state.error_code == "invalid_segmentation_input"


def test_service_error_response_sends_retry_after_rounded_up() -> None:
    response = handlers.service_error_response(errors.OverloadedError("the queue is full", retry_after_seconds=0.2))

    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    assert body_of(response) == {"error": {"code": "overloaded", "message": "the queue is full"}}


def test_handle_validation_error_names_location_message_and_short_value() -> None:
    error = RequestValidationError(
        [
            {"loc": ("body", "file"), "msg": "Field required", "type": "missing"},
            {"loc": ("query", "mask_format"), "msg": "Input should be 'rle'", "input": "x", "type": "enum"},
        ]
    )

    response = asyncio.run(handlers.handle_validation_error(request(), error))

    assert response.status_code == 422
    assert body_of(response) == {
        "error": {
            "code": "validation_error",
            "message": "body.file: Field required; query.mask_format: Input should be 'rle' (got 'x')",
        }
    }


@pytest.mark.parametrize(
    ("status", "code"), [(404, "not_found"), (405, "method_not_allowed"), (413, "payload_too_large")]
)
def test_handle_http_exception_derives_the_code_from_the_status(status: int, code: str) -> None:
    response = asyncio.run(handlers.handle_http_exception(request(), HTTPException(status, detail="nope")))

    assert response.status_code == status
    assert body_of(response) == {"error": {"code": code, "message": "nope"}}


def test_handle_unexpected_error_hides_the_exception() -> None:
    response = asyncio.run(handlers.handle_unexpected_error(request(), RuntimeError("secret detail")))

    assert response.status_code == 500
    assert body_of(response) == {"error": {"code": "internal_error", "message": "internal server error"}}
    # Attack review 61 F3: sent from outside the middleware that adds them to every other answer.
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_handle_unexpected_error_names_the_request_it_failed() -> None:
    # The 500 is sent from outside the request-id middleware: the handler itself must say which request failed.
    failed = Request(
        {"type": "http", "method": "POST", "path": "/v1/overlay", "headers": [], "state": {"request_id": "abc123"}}
    )

    response = asyncio.run(handlers.handle_unexpected_error(failed, RuntimeError("secret detail")))

    assert response.headers["X-Request-ID"] == "abc123"
    assert failed.state.error_code == "internal_error"
    assert "X-Request-ID" not in asyncio.run(handlers.handle_unexpected_error(request(), RuntimeError())).headers
