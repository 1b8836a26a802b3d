"""Writes app/api/openapi_examples.json: real answers of the committed models to the committed test slices, and real
error bodies, shown as examples in /docs. Run again after the models change:

    python -m tests.api.openapi_examples
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient

from app.api.openapi_docs import EXAMPLES_FILE
from app.main import create_app
from app.settings import Settings
from tests.api.service_client import png_bytes, running_client
from tests.conftest import COMMITTED_MODEL_DIR, TUMOR_FREE_SLICE, TUMOR_SERIES, TUMOR_SLICE
from tests.dicom.builders import mr_series, to_bytes, tumor_channels

REQUEST_ID = "6f1c2b9e0d4a4e8f9a1b2c3d4e5f6a7b"  # the real ids are random uuid4 hex; one fixed id keeps diffs small
KEY_ID, KEY = "example", "example-key-0123456789"


def without_request_id(body: dict) -> dict:
    return {**body, "request_id": REQUEST_ID} if "request_id" in body else body


def jpeg(path: Path) -> tuple[str, bytes, str]:
    return (path.name, path.read_bytes(), "image/jpeg")


def collect_responses(client: TestClient) -> dict:
    """The answers to good requests, each from one real request (request ids replaced by one fixed id)."""
    responses = {}
    responses["predict_tumor"] = client.post("/v1/predict", files={"file": jpeg(TUMOR_SLICE)}).json()
    responses["predict_tumor_free"] = client.post("/v1/predict", files={"file": jpeg(TUMOR_FREE_SLICE)}).json()
    responses["batch"] = client.post(
        "/v1/predict/batch",
        files=[("files", jpeg(TUMOR_SERIES[0])), ("files", ("notes.txt", b"not an image\n", "text/plain"))],
    ).json()
    responses["series"] = client.post("/v1/predict/batch", files=dicom_series_upload()).json()
    responses["models"] = client.get("/v1/models").json()
    return {name: without_request_id(body) for name, body in responses.items()}


def dicom_series_upload() -> list:
    series = mr_series(tumor_channels())
    return [("files", (f"IM{index}", to_bytes(item), "application/dicom")) for index, item in enumerate(series)]


def collect(client: TestClient, limited: TestClient, unready: TestClient) -> dict:
    """Every example: the good answers, and the first body of each error code the requests below provoke."""
    examples: dict = {"responses": collect_responses(client), "errors": {}}
    dicom = dicom_series_upload()
    errors = examples["errors"]
    for response in (
        client.post("/v1/predict", files={"file": ("empty.png", b"", "image/png")}),
        client.post("/v1/predict", files={"file": ("cut.jpg", TUMOR_SLICE.read_bytes()[:2000], "image/jpeg")}),
        client.post("/v1/predict", files={"file": ("notes.txt", b"not an image\n", "text/plain")}),
        client.post("/v1/predict", files={"other": ("a.jpg", b"x", "image/jpeg")}),
        client.post("/v1/predict", files=[("file", jpeg(TUMOR_SLICE))] * 2),
        client.post("/v1/predict", files={"file": ("tiny.png", png_bytes(np.zeros((16, 16), np.uint8)), "image/png")}),
        client.post("/v1/predict?output=dicom-seg", files={"file": jpeg(TUMOR_SLICE)}),
        client.post("/v1/predict/batch", files=[dicom[0], ("files", jpeg(TUMOR_SLICE))]),
        limited.post("/v1/predict/batch", files=[("files", jpeg(TUMOR_SLICE))] * 9),
        limited.post("/v1/predict", files={"file": ("big.jpg", b"\xff\xd8" + b"0" * 200_000, "image/jpeg")}),
        limited.post("/v1/predict", files={"file": jpeg(TUMOR_SLICE)}),
        limited.post("/v1/predict", headers={"X-API-Key": "wrong"}, files={"file": jpeg(TUMOR_SLICE)}),
        client.post("/v1/predict", headers={"Sec-Fetch-Site": "cross-site"}, files={"file": jpeg(TUMOR_SLICE)}),
        limited.post("/v1/predict", headers={"Host": "evil.example"}, files={"file": jpeg(TUMOR_SLICE)}),
        unready.post("/v1/predict", files={"file": jpeg(TUMOR_SLICE)}),
        unready.post("/v1/predict", files={"file": jpeg(TUMOR_SLICE)}),
    ):
        body = response.json()
        errors.setdefault(body["error"]["code"], {"status": response.status_code, "body": body})
    return examples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=EXAMPLES_FILE)
    args = parser.parse_args()
    limited_settings = Settings(
        model_dir=COMMITTED_MODEL_DIR,
        max_upload_bytes=100_000,
        max_image_pixels=128 * 128,
        max_batch_files=8,
        api_keys=f"{KEY_ID}:{KEY}",
        allowed_hosts="testserver",  # the test client's Host
    )
    with running_client(Settings(model_dir=COMMITTED_MODEL_DIR)) as client, running_client(limited_settings) as limited:
        limited.headers["X-API-Key"] = KEY
        # Never started (no lifespan): the models are not loaded, and its rate limit allows one request a minute.
        unready = TestClient(
            create_app(Settings(model_dir=COMMITTED_MODEL_DIR, rate_limit_per_minute=1, rate_limit_burst=1))
        )
        examples = collect(client, limited, unready)
    args.output.write_text(json.dumps(examples, indent=1) + "\n")


if __name__ == "__main__":
    main()
