"""Running apps shared by the API tests: startup costs seconds of TensorFlow work, so each is started once."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.settings import Settings
from tests.api.service_client import (
    LIMITED_BATCH_FILES,
    LIMITED_IMAGE_PIXELS,
    LIMITED_QUEUE_SLICES,
    LIMITED_UPLOAD_BYTES,
    running_client,
)
from tests.conftest import NO_SLICE, make_tiny_model_dir


@pytest.fixture(scope="session")
def tiny_manifest(tiny_model_dir: Path) -> dict:
    return json.loads((tiny_model_dir / "manifest.json").read_text())


@pytest.fixture(scope="session")
def negative_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny models whose classifier threshold (1.01) no probability reaches: every slice negative."""
    return make_tiny_model_dir(tmp_path_factory.mktemp("negative_models"), classifier_threshold=NO_SLICE)


@pytest.fixture(scope="session")
def negative_client(negative_model_dir: Path) -> Iterator[TestClient]:
    with running_client(Settings(model_dir=negative_model_dir)) as client:
        yield client


@pytest.fixture(scope="session")
def limited_client(tiny_model_dir: Path) -> Iterator[TestClient]:
    """The tiny models behind small limits: upload bytes, image pixels, batch files and queued slices."""
    settings = Settings(
        model_dir=tiny_model_dir,
        max_upload_bytes=LIMITED_UPLOAD_BYTES,
        max_image_pixels=LIMITED_IMAGE_PIXELS,
        max_batch_files=LIMITED_BATCH_FILES,
        inference_queue_slices=LIMITED_QUEUE_SLICES,
    )
    with running_client(settings) as client:
        yield client
