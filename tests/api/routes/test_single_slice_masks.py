"""A slice answered on its own shows its mask only from the manifest's `single_slice_mask_min_probability`; a series
keeps its masks (its 3-D clean-up judges them instead)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.settings import Settings
from tests.api.service_client import batch_upload, running_client, upload
from tests.conftest import EVERY_SLICE, TUMOR_SERIES, TUMOR_SLICE, make_tiny_model_dir


@pytest.fixture(scope="module")
def unsure_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """Tiny models that call every slice positive (threshold 0) but show a single slice's mask only at probability
    1.0, which an untrained sigmoid never reaches."""
    model_dir: Path = make_tiny_model_dir(
        tmp_path_factory.mktemp("unsure_models"),
        classifier_threshold=EVERY_SLICE,
        single_slice_mask_min_probability=1.0,
    )
    with running_client(Settings(model_dir=model_dir)) as client:
        yield client


def test_a_single_slice_under_the_minimum_is_detected_without_a_mask(unsure_client: TestClient) -> None:
    response = unsure_client.post("/v1/predict", files=upload(TUMOR_SLICE.read_bytes(), "slice.jpg"))

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["tumor_detected"] is True and body["tumor_probability"] < 1.0
    assert body["mask"] is None
    models = unsure_client.get("/v1/models").json()
    assert models["segmenter"]["single_slice_mask_min_probability"] == 1.0
    overlay = unsure_client.post("/v1/overlay", files=upload(TUMOR_SLICE.read_bytes(), "slice.jpg"))
    assert overlay.status_code == 200 and overlay.headers["x-tumor-detected"] == "true"


def test_slices_of_a_batch_are_answered_alone_unless_they_form_a_series(unsure_client: TestClient) -> None:
    files = batch_upload([path.read_bytes() for path in TUMOR_SERIES])

    alone = unsure_client.post("/v1/predict/batch", files=files).json()["results"]
    series = unsure_client.post("/v1/predict/batch", params={"series": "true"}, files=files).json()["results"]

    assert [item["prediction"]["tumor_detected"] for item in alone] == [True, True, True]
    assert [item["prediction"]["mask"] for item in alone] == [None, None, None]
    assert all(item["prediction"]["mask"] is not None for item in series)
