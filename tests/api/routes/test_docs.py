"""/docs, /redoc and the OpenAPI document: offline assets, every error code, the API-key scheme, real examples."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from httpx import Response
from jsonschema import Draft202012Validator

import app.dicom.dicom_input
import app.dicom.dicom_seg
import app.dicom.dicom_series  # noqa: F401  (their error classes join ServiceError's subclasses)
from app.api.openapi_docs import ERROR_CATALOGUE, EXAMPLES_FILE, PREDICTION_STATUSES, PROTOCOL_CODES
from app.errors import ServiceError
from app.main import create_app
from app.settings import Settings
from tests.conftest import REPO_ROOT, TUMOR_FREE_SLICE, TUMOR_SLICE
from tests.dicom.builders import mr_series, to_bytes, tumor_channels


@pytest.fixture(scope="module")
def docs_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    # No lifespan: documentation needs no models.
    yield TestClient(create_app(Settings(model_dir=tmp_path_factory.mktemp("no_models"))))


@pytest.fixture(scope="module")
def openapi(docs_client: TestClient) -> dict:
    return docs_client.get("/openapi.json").json()


def all_subclasses(cls: type) -> set[type]:
    return {sub for direct in cls.__subclasses__() for sub in (direct, *all_subclasses(direct))}


@pytest.mark.parametrize(
    ("path", "asset"), [("/docs", "/static/docs/swagger-ui-bundle.js"), ("/redoc", "/static/docs/redoc.standalone.js")]
)
def test_docs_pages_load_their_scripts_from_the_service(docs_client: TestClient, path: str, asset: str) -> None:
    page = docs_client.get(path)

    assert page.status_code == 200
    assert f'src="{asset.removeprefix("/")}"' in page.text  # relative: a proxy's path prefix is kept
    assert "cdn.jsdelivr.net" not in page.text and "fonts.googleapis.com" not in page.text
    script = docs_client.get(asset)
    assert script.status_code == 200
    assert script.headers["content-type"] == "text/javascript; charset=utf-8"
    assert len(script.content) > 500_000  # the real bundle, not a stub


def test_read_docs_asset_refuses_files_outside_allow_list(docs_client: TestClient) -> None:
    response = docs_client.get("/static/docs/core.py")

    assert response.status_code == 404
    assert response.json() == {"error": {"code": "not_found", "message": "no documentation file 'core.py'"}}


def test_every_service_error_code_is_in_the_catalogue() -> None:
    documented = {entry.code for entry in ERROR_CATALOGUE}
    # file_unreadable is the CLI's, for a local path it cannot read; no HTTP answer carries it.
    codes = {error.code for error in all_subclasses(ServiceError)} - {"file_unreadable"}

    assert codes - documented == set()


def test_prediction_operations_document_every_error_status_with_its_codes(openapi: dict) -> None:
    for path in ("/v1/predict", "/v1/predict/batch", "/v1/overlay"):
        responses = openapi["paths"][path]["post"]["responses"]
        for status in PREDICTION_STATUSES:
            response = responses[str(status)]
            examples = response["content"]["application/json"]["examples"]
            expected = {entry.code for entry in ERROR_CATALOGUE if entry.status == status}
            assert set(examples) == expected, (path, status)
            for code, example in examples.items():
                assert example["value"]["error"]["code"] == code
                assert f"`{code}`" in response["description"]


def test_openapi_declares_x_api_key_scheme_on_the_v1_operations(openapi: dict) -> None:
    assert openapi["components"]["securitySchemes"]["ApiKey"] == {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
        "description": openapi["components"]["securitySchemes"]["ApiKey"]["description"],
    }
    for path, method in (("/v1/predict", "post"), ("/v1/predict/batch", "post"), ("/v1/models", "get")):
        # Optional ({}): a key is needed only when the server has keys configured.
        assert openapi["paths"][path][method]["security"] == [{"ApiKey": []}, {}]
    assert "security" not in openapi["paths"]["/health/ready"]["get"]


def test_openapi_examples_are_recorded_answers(openapi: dict) -> None:
    predict = openapi["paths"]["/v1/predict"]["post"]["responses"]["200"]["content"]["application/json"]["examples"]
    batch = openapi["paths"]["/v1/predict/batch"]["post"]["responses"]["200"]["content"]["application/json"]
    recorded = json.loads(EXAMPLES_FILE.read_text())["responses"]

    assert predict["predict_tumor"]["value"] == recorded["predict_tumor"]
    assert predict["predict_tumor_free"]["value"]["tumor_detected"] is False
    assert batch["examples"]["series"]["value"]["tumor_volume_ml"] > 0
    assert [item["ok"] for item in batch["examples"]["batch"]["value"]["results"]] == [True, False]


def test_recorded_examples_match_the_committed_models(committed_model_dir: Path) -> None:
    """The examples are what the committed models answer today (rerun `python -m tests.api.openapi_examples`)."""
    from tests.api.openapi_examples import collect_responses
    from tests.api.service_client import running_client

    recorded = json.loads(EXAMPLES_FILE.read_text())["responses"]
    with running_client(Settings(model_dir=committed_model_dir)) as client:
        fresh = collect_responses(client)

    hint = "the models changed: rerun python -m tests.api.openapi_examples"
    assert fresh["models"] == recorded["models"], hint
    for name in ("predict_tumor", "predict_tumor_free"):
        assert fresh[name]["tumor_probability"] == pytest.approx(recorded[name]["tumor_probability"], abs=1e-4), hint
        assert (fresh[name]["mask"] or {}).get("area_pixels") == pytest.approx(
            (recorded[name]["mask"] or {}).get("area_pixels"), abs=20
        ), hint
    assert fresh["series"]["tumor_volume_ml"] == pytest.approx(recorded["series"]["tumor_volume_ml"], rel=0.01), hint


def test_tumor_probability_is_documented_as_reproducible_to_about_1e_8_not_bit_for_bit(openapi: dict) -> None:
    """API review 48 F11: the same slice alone and in a batch differed by 5e-9; a client comparing answers for
    equality was not told."""
    prediction = openapi["components"]["schemas"]["Prediction"]["properties"]["tumor_probability"]
    readme = (REPO_ROOT / "README.md").read_text()

    assert "reproducible to about 1e-8, not bit for bit" in prediction["description"]
    assert "- `tumor_probability` is reproducible to about 1e-8, not bit for bit" in readme


def test_a_slice_alone_and_in_a_batch_gets_its_probability_within_1e_8(committed_model_dir: Path) -> None:
    """The tolerance the README and the schema give (API review 48 F11), with the committed models."""
    from tests.api.openapi_examples import jpeg
    from tests.api.service_client import running_client

    with running_client(Settings(model_dir=committed_model_dir)) as client:
        alone = client.post("/v1/predict", files={"file": jpeg(TUMOR_FREE_SLICE)}).json()
        batch = client.post(
            "/v1/predict/batch", files=[("files", jpeg(TUMOR_FREE_SLICE)), ("files", jpeg(TUMOR_SLICE))]
        )

    in_batch = batch.json()["results"][0]["prediction"]["tumor_probability"]
    assert in_batch == pytest.approx(alone["tumor_probability"], abs=1e-8, rel=0)


def test_host_not_allowed_is_documented_as_brain_tumor_serve_answers_it() -> None:
    """Docs review 45 F6: /docs said two Host headers get 403 `host_not_allowed`; `brain-tumor serve` answers them
    400 `invalid_http_request` (tests/security/test_server_limits.py), and an absolute-form target is judged too."""
    (entry,) = [entry for entry in ERROR_CATALOGUE if entry.code == "host_not_allowed"]

    assert "absolute-form request target" in entry.meaning
    assert "two Host headers are a 400 invalid_http_request" in entry.meaning


def test_openapi_describes_uploads_and_dicom_and_png_answers_as_binary(openapi: dict) -> None:
    """API review 48 F1: without `format: binary` a generated client sent the file's repr as a text field, and
    without a schema on the DICOM and PNG answers it json-decoded them."""
    binary = {"type": "string", "format": "binary"}
    paths = openapi["paths"]
    for path, field in (("/v1/predict", "file"), ("/v1/overlay", "file"), ("/v1/predict/batch", "files")):
        body = paths[path]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
        schema = openapi["components"]["schemas"][body["$ref"].rsplit("/", 1)[-1]]["properties"][field]
        part = schema["items"] if field == "files" else schema
        assert part["format"] == "binary", path
    predict_answer = paths["/v1/predict"]["post"]["responses"]["200"]["content"]
    batch_answer = paths["/v1/predict/batch"]["post"]["responses"]["200"]["content"]
    overlay_answer = paths["/v1/overlay"]["post"]["responses"]["200"]["content"]
    assert predict_answer["application/dicom"]["schema"] == binary
    assert batch_answer["application/dicom"]["schema"] == binary
    assert batch_answer['multipart/related; type="application/dicom"']["schema"] == binary
    assert overlay_answer["image/png"]["schema"] == binary


def test_accept_negotiation_is_described_in_prose_not_as_a_header_parameter(openapi: dict) -> None:
    """API review 48 F10: OpenAPI 3.1 says tools SHALL ignore a header parameter named Accept."""
    for path in ("/v1/predict", "/v1/predict/batch"):
        parameters = openapi["paths"][path]["post"]["parameters"]
        assert "accept" not in {parameter["name"].lower() for parameter in parameters}, path
        (output,) = [parameter for parameter in parameters if parameter["name"] == "output"]
        assert "the Accept header chooses" in output["description"]


def documented_examples(openapi: dict) -> Iterator[tuple[str, dict, dict]]:
    """(where, schema, example value) of every example of every response in the document."""
    for path, operations in openapi["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                for media_type, content in response.get("content", {}).items():
                    for name, example in content.get("examples", {}).items():
                        yield f"{method} {path} {status} {media_type} {name}", content["schema"], example["value"]


def test_every_example_validates_against_its_schema(openapi: dict) -> None:
    """API review 48 F8: FastAPI dropped every null from the examples, so the tumor-free answer lacked its required
    `mask`."""
    examples = list(documented_examples(openapi))
    for where, schema, value in examples:
        validator = Draft202012Validator({**schema, "components": openapi["components"]})
        assert list(validator.iter_errors(value)) == [], where
    predict = openapi["paths"]["/v1/predict"]["post"]["responses"]["200"]["content"]["application/json"]["examples"]
    assert predict["predict_tumor_free"]["value"]["mask"] is None
    assert len(examples) > 40  # every error code's and every recorded answer's


# The statuses each operation answers itself; every one also lists 500 and those of PROTOCOL_CODES.
OPERATION_STATUSES = {
    ("post", "/v1/predict"): PREDICTION_STATUSES,
    ("post", "/v1/predict/batch"): PREDICTION_STATUSES,
    ("post", "/v1/overlay"): PREDICTION_STATUSES,
    ("get", "/v1/models"): (401, 403, 422, 429),
    ("get", "/metrics"): (401, 403, 429),
    ("get", "/health/live"): (422,),
    ("get", "/health/ready"): (422, 503),
}


def test_every_operation_documents_every_status_it_answers(openapi: dict) -> None:
    """API review 48 F3: 422 on /v1/models and /health/*, 401 on /metrics, 500 and the protocol-level refusals were
    answered but not in the document (a generated client returns None for an undocumented status)."""
    operations = {(method, path): item for path, items in openapi["paths"].items() for method, item in items.items()}
    assert set(operations) == set(OPERATION_STATUSES)  # a new operation gets its row here
    for key, statuses in OPERATION_STATUSES.items():
        responses = operations[key]["responses"]
        assert {"200", "500", *map(str, statuses)} <= set(responses), key
        assert "default" not in responses, key  # openapi-python-client parsed the overlay's PNG by it, as JSON
        for entry in ERROR_CATALOGUE:
            if entry.code in PROTOCOL_CODES:
                assert entry.code in responses[str(entry.status)]["content"]["application/json"]["examples"], key
        assert set(responses["500"]["content"]["application/json"]["examples"]) == {"internal_error"}, key
    assert operations[("get", "/metrics")]["security"] == [{"ApiKey": []}, {}]
    for key in (("get", "/v1/models"), ("get", "/health/live"), ("get", "/health/ready")):
        assert set(operations[key]["responses"]["422"]["content"]["application/json"]["examples"]) == {
            "validation_error"
        }


def test_every_operation_answers_refusals_it_documents(
    docs_client: TestClient, openapi: dict, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Real requests: an unknown query parameter, and no key where the server has keys, each get a status the
    operation lists."""
    keyed = TestClient(
        create_app(Settings(model_dir=tmp_path_factory.mktemp("keyed"), api_keys="lab:Kq7w9Zp2Xr4Ty6Um"))
    )
    for path, items in openapi["paths"].items():
        for method in items:
            documented = set(items[method]["responses"])
            unknown_query = docs_client.request(method, f"{path}?unknown=1")
            assert str(unknown_query.status_code) in documented, (method, path, unknown_query.text)
            without_key = keyed.request(method, path)
            assert str(without_key.status_code) in documented, (method, path, without_key.text)
            if not path.startswith("/health/"):
                assert without_key.status_code == 401


def test_openapi_says_a_seg_request_without_tumor_is_answered_json(openapi: dict) -> None:
    """API review 48 F5: output=dicom-seg of a tumor-free slice or series answers the JSON; the document said only
    "a DICOM SEG with output=dicom-seg"."""
    for path in ("/v1/predict", "/v1/predict/batch"):
        operation = openapi["paths"][path]["post"]
        (output,) = [parameter for parameter in operation["parameters"] if parameter["name"] == "output"]
        assert "else the answer is the JSON, with X-Tumor-Detected: false" in output["description"], path
        assert "with X-Tumor-Detected: false" in operation["responses"]["200"]["description"], path


# Headers the HTTP stack or the security middleware sends the same way on every answer: not the API's own.
GENERIC_HEADERS = {"x-content-type-options", "x-frame-options"}


def own_headers(response: Response) -> set[str]:
    """The answer's headers a client of the API reads: X-*, Retry-After and Allow, in lower case."""
    names = {name.lower() for name in response.headers}
    return {name for name in names if name.startswith("x-") or name in {"retry-after", "allow"}} - GENERIC_HEADERS


def declared_headers(openapi: dict, method: str, path: str, status: int) -> set[str]:
    responses = openapi["paths"][path][method]["responses"]
    response = responses[str(status)]
    return {name.lower() for name in response.get("headers", {})}


def test_openapi_declares_the_headers_of_dicom_overlay_and_retry_answers(openapi: dict) -> None:
    """API review 48 F4: no response declared a header, though a DICOM answer's decision is in its headers."""
    series_headers = {
        "X-Tumor-Detected": "boolean",
        "X-Tumor-Volume-mL": "number",
        "X-Tumor-Reaches-Series-End": "boolean",
        "X-Files-Skipped": "integer",
        "X-Skipped-File-Indices": "string",
        "X-Series-Used": "string",
        "X-Files-Left-Out": "integer",
        "X-Request-ID": "string",
    }
    for path in ("/v1/predict", "/v1/predict/batch"):
        headers = openapi["paths"][path]["post"]["responses"]["200"]["headers"]
        assert {name: headers[name]["schema"]["type"] for name in series_headers} == series_headers
        assert {"type": "string", "enum": ["unknown"]} in headers["X-Slices-Missing"]["schema"]["anyOf"]
    overlay = openapi["paths"]["/v1/overlay"]["post"]["responses"]["200"]["headers"]
    assert overlay["X-Tumor-Probability"]["schema"]["type"] == "number"
    assert overlay["X-Tumor-Detected"]["schema"]["type"] == "boolean"
    for path, items in openapi["paths"].items():
        for method, operation in items.items():
            for status, response in operation["responses"].items():
                assert "X-Request-ID" in response["headers"], (method, path, status)
                if status in ("429", "503"):
                    assert response["headers"]["Retry-After"]["schema"]["type"] == "integer", (method, path)


def test_every_header_the_api_answers_with_is_declared(
    client: TestClient, negative_client: TestClient, docs_client: TestClient, openapi: dict, tmp_path: Path
) -> None:
    """API review 48 F4: real answers of the tiny models, each of whose own headers its operation and status
    declare."""
    series = [to_bytes(dataset) for dataset in mr_series(tumor_channels())]
    broken = b"\0" * 128 + b"DICM" + b"\x02\x00"
    dicom_parts = [("files", (f"IM{index}", data)) for index, data in enumerate([series[0], broken, *series[1:]])]
    slice_part = {"file": ("slice.jpg", TUMOR_SLICE.read_bytes())}
    throttled = TestClient(create_app(Settings(model_dir=tmp_path, rate_limit_per_minute=1, rate_limit_burst=1)))
    answers = [
        ("post", "/v1/predict", client.post("/v1/predict", files=slice_part)),
        ("post", "/v1/predict", client.post("/v1/predict?output=dicom-seg", files={"file": ("IM0", series[0])})),
        (
            "post",
            "/v1/predict",
            negative_client.post("/v1/predict?output=dicom-seg", files={"file": ("IM", series[0])}),
        ),
        ("post", "/v1/predict", client.post("/v1/predict", files={"file": ("a.txt", b"text")})),
        ("post", "/v1/predict/batch", client.post("/v1/predict/batch?output=dicom-seg", files=dicom_parts)),
        ("post", "/v1/predict/batch", client.post("/v1/predict/batch?output=dicom-sr", files=dicom_parts)),
        ("post", "/v1/predict/batch", client.post("/v1/predict/batch?output=dicom-seg-sr", files=dicom_parts)),
        ("post", "/v1/predict/batch", negative_client.post("/v1/predict/batch?output=dicom-seg", files=dicom_parts)),
        ("post", "/v1/overlay", client.post("/v1/overlay", files=slice_part)),
        ("post", "/v1/overlay", client.post("/v1/overlay?x=1", files=slice_part)),
        ("get", "/v1/models", client.get("/v1/models")),
        ("get", "/health/live", client.get("/health/live")),
        ("get", "/health/ready", client.get("/health/ready")),
        ("get", "/health/ready", docs_client.get("/health/ready")),  # no models: 503 with Retry-After
        ("get", "/metrics", client.get("/metrics")),
        ("get", "/v1/models", client.put("/v1/models")),  # 405 with Allow
        ("post", "/v1/predict", throttled.post("/v1/predict")),
        ("post", "/v1/predict", throttled.post("/v1/predict")),  # 429 with Retry-After
    ]
    statuses = {response.status_code for _, _, response in answers}
    assert {200, 405, 415, 422, 429, 503} <= statuses
    assert "x-skipped-file-indices" in own_headers(answers[4][2]) and "retry-after" in own_headers(answers[-1][2])
    for method, path, response in answers:
        undeclared = own_headers(response) - declared_headers(openapi, method, path, response.status_code)
        assert undeclared == set(), (method, path, response.status_code)
