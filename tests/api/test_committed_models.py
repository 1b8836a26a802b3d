"""The service on the trained models committed in models/: real predictions on held-out slices, and model integrity.

These fail (at fixture setup) until models/manifest.json and the exported models are committed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import keras
import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.core.model_store import read_manifest
from app.core.preprocessing import preprocess_slice
from app.inference import Predictor
from app.settings import Settings
from tests.api.service_client import batch_upload, decode_png_mask, decode_rle, png_bytes, running_client, upload
from tests.conftest import TUMOR_FREE_SLICE, TUMOR_SERIES, TUMOR_SLICE, dice, read_truth
from training.data import read_image

MIN_DICE = 0.7


@pytest.fixture(scope="module")
def committed_client(committed_model_dir: Path) -> Iterator[TestClient]:
    with running_client(Settings(model_dir=committed_model_dir)) as client:
        yield client


@pytest.fixture(scope="module")
def committed_manifest(committed_model_dir: Path) -> dict:
    return json.loads((committed_model_dir / "manifest.json").read_text())


def test_committed_manifest_hashes_match_files(committed_model_dir: Path, committed_manifest: dict) -> None:
    files = committed_manifest["files"]
    for role in ("classifier", "segmenter"):
        assert committed_manifest[role]["architecture"] in files
        assert committed_manifest[role]["weights"] in files
        assert committed_manifest[role]["onnx"] in files
    assert committed_manifest["split"] in files

    for name, recorded in files.items():
        assert hashlib.sha256((committed_model_dir / name).read_bytes()).hexdigest() == recorded, name
    read_manifest(committed_model_dir)  # the service's own check agrees


def test_committed_manifest_carries_the_choices_its_evaluation_made(
    committed_model_dir: Path, committed_manifest: dict
) -> None:
    evaluation = json.loads((committed_model_dir / "evaluation" / "evaluation.json").read_text())
    segmenter = committed_manifest["segmenter"]

    assert committed_manifest["classifier"]["threshold"] == evaluation["thresholds"]["classifier"]
    assert segmenter["threshold"] == evaluation["thresholds"]["mask"]
    assert segmenter["series_min_component_voxels"] == evaluation["series_min_component_voxels"]
    assert segmenter["single_slice_mask_min_probability"] == evaluation["single_slice_mask_min_probability"]
    assert segmenter["single_slice_min_component_pixels"] == evaluation["single_slice_min_component_pixels"]
    assert committed_manifest["metrics"] == evaluation["metrics"]


def test_models_endpoint_shows_every_choice_that_shapes_an_answer(
    committed_client: TestClient, committed_manifest: dict
) -> None:
    models = committed_client.get("/v1/models").json()

    for choice in (
        "series_min_component_voxels",
        "single_slice_mask_min_probability",
        "single_slice_min_component_pixels",
    ):
        assert models["segmenter"][choice] == committed_manifest["segmenter"][choice] > 0
        # Docs review 45 F11: the classifier's entry showed them as 0, which read as "off"; they are the segmenter's.
        assert choice not in models["classifier"]


def test_committed_predict_detects_tumor_with_dice_over_0_7(committed_client: TestClient) -> None:
    response = committed_client.post(
        "/v1/predict", params={"mask_format": "both"}, files=upload(TUMOR_SLICE.read_bytes(), "slice.jpg")
    )

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["tumor_detected"] is True
    assert body["tumor_probability"] >= body["threshold"]
    predicted = decode_rle(body["mask"]["rle"])
    np.testing.assert_array_equal(predicted, decode_png_mask(body["mask"]["png"]))
    assert body["mask"]["area_pixels"] == int(predicted.sum())
    score = dice(read_truth(TUMOR_SLICE), predicted)
    assert score > MIN_DICE, f"Dice {score:.3f} against the ground truth"


def test_committed_predict_tumor_free_slice_has_null_mask(committed_client: TestClient) -> None:
    assert read_truth(TUMOR_FREE_SLICE).sum() == 0

    response = committed_client.post("/v1/predict", files=upload(TUMOR_FREE_SLICE.read_bytes(), "slice.jpg"))

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["tumor_detected"] is False
    assert body["tumor_probability"] < body["threshold"]
    assert body["mask"] is None


def test_committed_models_report_manifest_tags(committed_client: TestClient, committed_manifest: dict) -> None:
    body = committed_client.post("/v1/predict", files=upload(TUMOR_SLICE.read_bytes(), "slice.jpg")).json()

    assert body["threshold"] == committed_manifest["classifier"]["threshold"]
    assert body["models"] == {
        role: f"{committed_manifest[role]['name']}@{committed_manifest[role]['version']}"
        for role in ("classifier", "segmenter")
    }


def test_models_endpoint_names_no_test_patient(committed_client: TestClient, committed_manifest: dict) -> None:
    """The manifest's per-patient Dice figures are keyed by the test patients' case IDs: kept in the manifest and
    the model card, left out of the API, which gives every other figure as the manifest has it."""
    body = committed_client.get("/v1/models").json()

    assert "TCGA_" in json.dumps(committed_manifest["metrics"])
    assert "TCGA_" not in json.dumps(body) and "_by_patient" not in json.dumps(body)
    segmentation = committed_manifest["metrics"]["segmentation"]
    assert body["metrics"]["segmentation"] == {
        key: value for key, value in segmentation.items() if key != "volume_dice_by_patient"
    }
    assert body["metrics"]["classifier"] == committed_manifest["metrics"]["classifier"]


def test_committed_batch_matches_single_predictions(committed_client: TestClient) -> None:
    paths = [*TUMOR_SERIES, TUMOR_FREE_SLICE]
    singles = [
        committed_client.post("/v1/predict", files=upload(path.read_bytes(), "slice.jpg")).json() for path in paths
    ]

    response = committed_client.post(
        "/v1/predict/batch", files=[("files", (path.name, path.read_bytes(), "image/jpeg")) for path in paths]
    )

    assert response.status_code == 200, response.text
    for item, single in zip(response.json()["results"], singles, strict=True):
        assert item["prediction"]["tumor_detected"] == single["tumor_detected"]
        assert item["prediction"]["tumor_probability"] == pytest.approx(single["tumor_probability"], abs=1e-5)


def test_committed_models_reload_to_same_outputs_as_predictor(
    committed_model_dir: Path, committed_manifest: dict
) -> None:
    batch = np.stack([preprocess_slice(read_image(path)) for path in [*TUMOR_SERIES, TUMOR_FREE_SLICE]])
    predictor = Predictor.from_model_dir(committed_model_dir)

    reloaded, models = {}, {}
    for role in ("classifier", "segmenter"):
        entry = committed_manifest[role]
        models[role] = keras.models.model_from_json((committed_model_dir / entry["architecture"]).read_text())
        models[role].load_weights(committed_model_dir / entry["weights"])
        reloaded[role] = np.asarray(models[role](batch, training=False))
    mirrored = np.asarray(models["classifier"](np.ascontiguousarray(batch[:, :, ::-1]), training=False))
    # The manifest says how the classifier is served: plain, or the mean over the slice and its mirror.
    expected = (
        (reloaded["classifier"] + mirrored) / 2
        if committed_manifest["classifier"]["flip_average"]
        else reloaded["classifier"]
    )

    np.testing.assert_allclose(predictor.classify(batch), expected.reshape(-1), atol=1e-5)
    np.testing.assert_allclose(predictor.segment(batch), reloaded["segmenter"][..., 0], atol=1e-5)


def test_committed_onnx_files_match_the_keras_models(committed_model_dir: Path) -> None:
    pytest.importorskip("onnxruntime", reason='the onnx extra is installed by make test (pip install -e ".[onnx]")')
    batch = np.stack([preprocess_slice(read_image(path)) for path in [*TUMOR_SERIES, TUMOR_FREE_SLICE]])
    on_keras = Predictor.from_model_dir(committed_model_dir)
    on_onnx = Predictor.from_model_dir(committed_model_dir, runtime="onnxruntime")

    np.testing.assert_allclose(on_onnx.classify(batch), on_keras.classify(batch), atol=1e-5)
    np.testing.assert_allclose(on_onnx.segment(batch), on_keras.segment(batch), atol=1e-5)


def flair_volume() -> list[np.ndarray]:
    """The FLAIR channel of the committed slices, in volume order (8, 20, 21, 22)."""
    return [read_image(path)[:, :, 1] for path in [TUMOR_FREE_SLICE, *TUMOR_SERIES]]


def series_answers(client: TestClient, files: list[bytes]) -> list[dict]:
    response = client.post(
        "/v1/predict/batch", params={"series": "true", "mask_format": "rle"}, files=batch_upload(files)
    )
    assert response.status_code == 200, response.text
    return [item["prediction"] for item in response.json()["results"]]


def test_a_16_bit_series_answers_as_its_8_bit_export_does(committed_client: TestClient) -> None:
    """Attack review: each 16-bit slice of a series was stretched over its own range, so the darker slices of a
    volume came out brighter than the 8-bit export of the same values (tumor-free slices answered "tumor"). A series'
    deep slices are now stretched over the series, as kaggle_3m stretched its volumes and DICOM series are.

    The 8-bit export is the FLAIR values stretched over these four slices (their maximum is 223, the 0..255 the
    dataset's volumes fill), and the 16-bit one the FLAIR values x16: the same volume at two depths."""
    volume = flair_volume()
    top = max(int(flair.max()) for flair in volume)
    assert min(int(flair.min()) for flair in volume) == 0 and top < 255  # the four slices' own range is narrower
    eight_bit = [np.rint(flair * (255 / top)).astype(np.uint8) for flair in volume]
    sixteen_bit = [flair.astype(np.uint16) * 16 for flair in volume]

    expected = series_answers(committed_client, [png_bytes(image) for image in eight_bit])
    answers = series_answers(committed_client, [png_bytes(image) for image in sixteen_bit])

    assert [answer["tumor_detected"] for answer in expected] == [False, True, True, True]
    for answer, reference in zip(answers, expected, strict=True):
        assert answer["tumor_probability"] == pytest.approx(reference["tumor_probability"], abs=1e-4)
        assert answer["tumor_detected"] == reference["tumor_detected"]
        if reference["mask"] is None:
            assert answer["mask"] is None
        else:
            np.testing.assert_array_equal(decode_rle(answer["mask"]["rle"]), decode_rle(reference["mask"]["rle"]))


def test_a_16_bit_slice_alone_is_still_stretched_over_itself(committed_client: TestClient) -> None:
    """Without `series` each slice is its own volume: the 16-bit slice answers as its own 8-bit stretch does."""
    flair = flair_volume()[0]
    own = np.rint((flair - flair.min()) * (255 / np.ptp(flair))).astype(np.uint8)
    files = [png_bytes(own), png_bytes(flair.astype(np.uint16) * 16)]

    response = committed_client.post("/v1/predict/batch", files=batch_upload(files))

    assert response.status_code == 200, response.text
    reference, answer = (item["prediction"] for item in response.json()["results"])
    assert answer["tumor_probability"] == pytest.approx(reference["tumor_probability"], abs=1e-4)
