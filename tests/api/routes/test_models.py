"""GET /v1/models: the public part of the manifest, without file names or hashes."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from app.cli import build_parser
from tests.api.service_client import sample_value, upload
from tests.conftest import EVERY_SLICE, REPO_ROOT, TUMOR_SLICE, pyproject_version


def test_read_models_shows_names_versions_thresholds(client: TestClient, tiny_manifest: dict) -> None:
    response = client.get("/v1/models")

    assert response.status_code == 200, response.text
    body = response.json()
    entries = {
        role: {
            "name": tiny_manifest[role]["name"],
            "version": tiny_manifest[role]["version"],
            "tag": f"{tiny_manifest[role]['name']}@{tiny_manifest[role]['version']}",
            "parameters": tiny_manifest[role]["parameters"],
            "threshold": tiny_manifest[role]["threshold"],
            "flip_average": False,
        }
        for role in ("classifier", "segmenter")
    }
    assert body["classifier"] == entries["classifier"]
    assert body["segmenter"] == {
        **entries["segmenter"],
        "single_slice_mask_min_probability": 0.0,
        "single_slice_min_component_pixels": 0,
        "series_min_component_voxels": tiny_manifest["segmenter"].get("series_min_component_voxels", 0),
    }
    assert body["classifier"]["threshold"] == EVERY_SLICE
    assert body["segmenter"]["threshold"] == 0.5
    assert body["input_shape"] == [256, 256, 3]
    assert body["preprocessing"] == tiny_manifest["preprocessing"]
    assert body["metrics"] == {"note": "tiny untrained test models"}
    assert body["versions"] == tiny_manifest["versions"]
    assert body["runtime"] == "keras"
    assert body["max_batch_files"] == 256  # MAX_BATCH_FILES, for clients to check a series before uploading
    assert body["max_upload_bytes"] == 20 * 2**20  # MAX_UPLOAD_BYTES, for clients to check a file before uploading


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


def test_every_place_that_names_the_release_names_pyproject_version(
    client: TestClient, capsys: pytest.CaptureFixture[str]
) -> None:
    """Operations review 32: every build said 0.1.0, so an operator could not tell releases apart. pyproject.toml's
    version is the one source (installed: `pip install -e .` again after a bump); CHANGELOG.md describes it."""
    version = pyproject_version()
    assert re.fullmatch(r"\d+\.\d+\.\d+", version) and version != "0.1.0"

    assert client.get("/v1/models").json()["service_version"] == version
    assert sample_value(client.get("/metrics").text, "brain_tumor_build_info", version=version) == 1.0
    assert client.get("/openapi.json").json()["info"]["version"] == version
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["--version"])
    assert exited.value.code == 0 and capsys.readouterr().out == f"brain-tumor {version}\n"
    releases = re.findall(r"^## (\S+) \(", (REPO_ROOT / "CHANGELOG.md").read_text(), re.M)
    assert releases[0] == version, "describe the release at the top of CHANGELOG.md"
