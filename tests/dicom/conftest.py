"""Fixtures of the pacs-sync tests: a real Orthanc on loopback and the tiny models, one of each per test module."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from app.inference import Predictor
from tests.dicom.orthanc_server import Orthanc, running_orthanc


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    with running_orthanc(tmp_path_factory.mktemp("orthanc")) as server:
        yield server


@pytest.fixture(scope="module")
def predictor(tiny_model_dir: Path) -> Predictor:
    loaded = Predictor.from_model_dir(tiny_model_dir)
    loaded.warm_up()
    return loaded
