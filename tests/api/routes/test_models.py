"""GET /v1/models: the public part of the manifest, without file names or hashes."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.api.service_client import upload
from tests.conftest import EVERY_SLICE, TUMOR_SLICE


def test_read_models_shows_names_versions_thresholds(client: TestClient, tiny_manifest: dict) -> None:
    response = client.get("/v1/models")

    assert response.status_code == 200, response.text
    body = response.json()
    for role in ("classifier", "segmenter"):
        entry = tiny_manifest[role]
        assert body[role] == {
            "name": entry["name"],
            "version": entry["version"],
            "tag": f"{entry['name']}@{entry['version']}",
            "parameters": entry["parameters"],
            "threshold": entry["threshold"],
            "flip_average": False,
            "single_slice_mask_min_probability": 0.0,
            "single_slice_min_component_pixels": 0,
            "series_min_component_voxels": entry.get("series_min_component_voxels", 0),
        }
    assert body["classifier"]["threshold"] == EVERY_SLICE
    assert body["segmenter"]["threshold"] == 0.5
    assert body["input_shape"] == [256, 256, 3]
    assert body["preprocessing"] == tiny_manifest["preprocessing"]
    assert body["metrics"] == {"note": "tiny untrained test models"}
    assert body["versions"] == tiny_manifest["versions"]
    assert body["runtime"] == "keras"


def test_read_models_hides_files_and_hashes(client: TestClient, tiny_manifest: dict) -> None:
    response = client.get("/v1/models")

    assert "files" not in response.json()
    for file_name, digest in tiny_manifest["files"].items():
        assert digest not in response.text
        assert file_name not in response.text


def test_read_models_tags_match_predictions(client: TestClient) -> None:
    models = client.get("/v1/models").json()

    tags = client.post("/v1/predict", files=upload(TUMOR_SLICE.read_bytes(), "slice.jpg")).json()["models"]

    assert tags == {"classifier": models["classifier"]["tag"], "segmenter": models["segmenter"]["tag"]}
