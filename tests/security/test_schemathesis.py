"""Schemathesis against the app's own OpenAPI schema: generated requests never get a 5xx, and every response
(status, content type, headers, body) matches what the schema documents.

The app runs in-process over ASGI on the tiny models, with the lifespan started by Schemathesis; the models must be
warm before the first case, or the predict endpoints would answer the (documented) 503 to everything.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import positive_data_acceptance

from app.main import create_app
from tests.security.conftest import READY_TIMEOUT_SECONDS, security_settings

CONFIG = """
# A negative multipart body is still bytes on the wire: an "invalid" file list can hold more files than MAX_BATCH_FILES
# and be refused with the documented 413 before anything looks at its content.
[checks.negative_data_rejection]
expected-statuses = ["400", "401", "404", "405", "406", "409", "413", "415", "422", "428", "429"]
"""


@pytest.fixture
def api_schema(tiny_model_dir: Path):
    # A fresh app per test: Schemathesis's pytest plugin ends the ASGI lifespan it started when each test ends.
    schema = schemathesis.openapi.from_asgi(
        "/openapi.json", create_app(security_settings(tiny_model_dir)), config=SchemathesisConfig.from_str(CONFIG)
    )
    readiness = schema["/health/ready"]["GET"]
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while readiness.Case().call().status_code != 200:
        if time.monotonic() > deadline:
            pytest.fail(f"the app was not ready within {READY_TIMEOUT_SECONDS:g} s")
        time.sleep(0.1)
    return schema


def real_image_body(operation, jpeg: bytes) -> dict | None:
    """A body of real slices for the upload operations (None for the others)."""
    properties = operation.definition.raw.get("requestBody", {}).get("content", {}).get("multipart/form-data")
    if properties is None:
        return None
    return {"files": [jpeg, jpeg]} if operation.path.endswith("/batch") else {"file": jpeg}


def json_answer_for_images(operation, body: dict) -> dict:
    """Fixed parts of a real-image case: the images, and a JSON answer (a DICOM SEG needs DICOM input, so a JPEG with
    output=dicom-seg is rightly refused with 400; Accept is no parameter in the document, API review 48 F10, and a
    JPEG asked for DICOM by Accept gets JSON)."""
    declared = {
        (parameter["in"], parameter["name"].lower()) for parameter in operation.definition.raw.get("parameters", [])
    }
    fixed: dict = {"body": body}
    if ("query", "output") in declared:
        fixed["query"] = {"output": "json"}
    return fixed


RUNS = {
    # Generated bodies: schema-valid bytes are rarely a decodable image, so a 400/415 answer to "valid" data is right
    # (the schema cannot say "a PNG, JPEG or TIFF"); positive_data_acceptance is left out for them only.
    "generated-positive": (GenerationMode.POSITIVE, False, 20),
    "generated-negative": (GenerationMode.NEGATIVE, False, 20),
    # Real slices as the files, generated everything else: now a valid request must be accepted.
    "real-image-positive": (GenerationMode.POSITIVE, True, 10),
}


def fuzz_operation(strategy, excluded_checks: list, max_examples: int) -> None:
    """Send `max_examples` generated cases; each must pass Schemathesis's checks and carry the error body."""

    @given(case=strategy)
    @settings(max_examples=max_examples, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    def check(case) -> None:
        response = case.call_and_validate(excluded_checks=excluded_checks)
        assert response.status_code < 500, response.text
        content_type = ",".join(response.headers.get("content-type", []))
        if response.status_code >= 400 and content_type.startswith("application/json"):
            assert set(response.json()["error"]) == {"code", "message"}, response.text

    check()


@pytest.mark.parametrize("run", sorted(RUNS))
def test_api_conforms_to_its_openapi_schema(api_schema, good_jpeg: bytes, run: str):
    # One Hypothesis run per operation, in a loop: Schemathesis's own pytest integration for fixture-made schemas
    # (`schemathesis.pytest.from_fixture`) breaks on pytest 9 (it sets `Function._nodeid`).
    mode, real_images, max_examples = RUNS[run]
    failures: dict[str, str] = {}
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert {operation.label for operation in operations} >= {"POST /v1/predict", "GET /v1/models", "GET /health/live"}
    for operation in operations:
        body = real_image_body(operation, good_jpeg) if real_images else None
        if real_images and body is None:
            continue
        strategy = operation.as_strategy(
            generation_mode=mode, **(json_answer_for_images(operation, body) if body else {})
        )
        excluded = [] if real_images or mode is GenerationMode.NEGATIVE else [positive_data_acceptance]
        try:
            fuzz_operation(strategy, excluded, max_examples)
        except Unsatisfiable:
            if mode is not GenerationMode.NEGATIVE:
                raise  # only an operation without parameters or body has nothing to make invalid
        except Exception as error:  # every operation runs; all failures are reported together
            failures[operation.label] = f"{type(error).__name__}: {error}"
    assert not failures, "\n\n".join(f"{label}:\n{error}" for label, error in failures.items())
