"""Shared fixtures: a few real LGG slices committed under tests/data, tiny exported model folders, the app on one."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import socketserver
import tomllib
from collections.abc import Iterator
from pathlib import Path

import keras
import numpy as np
import pytest
from fastapi.testclient import TestClient
from pynetdicom.transport import AssociationServer

from app import inference
from app.core.model_store import ModelEntry
from app.inference import Predictor
from app.settings import Settings
from tests.api.service_client import running_client
from tests.lgg_data import (  # noqa: F401 (the committed slices: tests import them from here)
    FLAIR_CHANNEL,
    TEST_DATA,
    TUMOR_FREE_SLICE,
    TUMOR_SERIES,
    TUMOR_SLICE,
    mask_path_of,
    read_slice,
    read_truth,
)
from training.export import export_models
from training.models import build_classifier, build_resunet

REPO_ROOT = Path(__file__).resolve().parents[1]
COMMITTED_MODEL_DIR = REPO_ROOT / "models"


def pytest_configure(config: pytest.Config) -> None:
    """pynetdicom's servers (the DICOM node's, the tests' results SCPs) look for a shutdown request every 0.5 s, the
    default poll interval of `socketserver`'s `serve_forever`: every node test's teardown waited for it twice, 0.9 s
    of the 1 s a node test's teardown took (about 70 s of the suite's 13 min on 2 workers). Here they look every
    0.05 s: a node's stop in the tests lacks that wait (up to 0.5 s; `bench.node_stop` measures the real one)."""

    def serve_forever(server: socketserver.BaseServer, poll_interval: float = 0.05) -> None:
        socketserver.BaseServer.serve_forever(server, poll_interval)

    AssociationServer.serve_forever = serve_forever


@pytest.fixture(scope="session", autouse=True)
def models_compiled_once_per_process() -> Iterator[None]:
    """Each model file is loaded and compiled once per test process, however many apps, nodes and commands serve it.

    An app's start loaded and traced both models afresh: about 2.5 s of a test that starts its own app or command on
    the 2-core test machine (test_auth's 22 tests took 50 s, 6 s without it). A compiled model is a pure function of
    its files, so it is kept, keyed by the files' paths, sizes and change times (a test that rewrites a file gets it
    loaded again). Everything around it runs as served: the manifest and hash checks, the Predictor, its warm-up.
    Keras runtime only: ONNX Runtime's load logs what a test may check, and is rare in the tests."""
    load = inference.load_for_inference
    compiled: dict[tuple, inference.ModelFunction] = {}

    def load_once(model_dir: str | Path, entry: ModelEntry, runtime: str = "keras") -> inference.ModelFunction:
        if runtime != "keras":
            return load(model_dir, entry, runtime)
        files = [Path(model_dir).resolve() / name for name in (entry.architecture, entry.weights)]
        try:
            stats = [(str(path), (stat := path.stat()).st_size, stat.st_mtime_ns) for path in files]
        except OSError:  # a missing file: the load says so, as served
            return load(model_dir, entry, runtime)
        key = (keras.backend.backend(), *stats)
        if key not in compiled:
            compiled[key] = load(model_dir, entry, runtime)
        return compiled[key]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(inference, "load_for_inference", load_once)
        yield


def pyproject_version() -> str:
    """The release pyproject.toml names: what the service must report (`app.release`)."""
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["version"]


def dice(truth: np.ndarray, predicted: np.ndarray) -> float:
    total = int(truth.sum()) + int(predicted.sum())
    return 1.0 if total == 0 else 2.0 * float(np.logical_and(truth, predicted).sum()) / total


# Thresholds a manifest takes (strictly between 0 and 1) that, for tiny untrained models, pass every slice (or mask
# pixel) or none: their sigmoid outputs stay far from 0 and 1.
EVERY_SLICE = 1e-12
NO_SLICE = math.nextafter(1.0, 0.0)


def make_tiny_model_dir(
    directory: Path,
    classifier_threshold: float = EVERY_SLICE,
    mask_threshold: float = 0.5,
    flip_average: bool = False,
    single_slice_mask_min_probability: float = 0.0,
    single_slice_min_component_pixels: int = 0,
    series_min_component_voxels: int = 0,
) -> Path:
    """Export two tiny untrained models with a valid manifest into `directory`.

    With `classifier_threshold=EVERY_SLICE` every slice counts as positive, so the segmenter path always runs; the
    masks are whatever random weights draw, which is enough to test plumbing, never accuracy. `flip_average`,
    `single_slice_mask_min_probability`, `single_slice_min_component_pixels` and `series_min_component_voxels` as in
    the manifest.
    """
    keras.utils.set_random_seed(0)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "split.json").write_text(json.dumps({"seed": 0, "train": [], "validation": [], "test": []}))
    export_models(
        directory,
        build_classifier(filters=(4, 8)),
        build_resunet(filters=(4, 8, 16)),
        classifier_threshold=classifier_threshold,
        mask_threshold=mask_threshold,
        split_file="split.json",
        metrics={"note": "tiny untrained test models"},
        version="0.0.0-test",
        classifier_flip_average=flip_average,
        single_slice_mask_min_probability=single_slice_mask_min_probability,
        single_slice_min_component_pixels=single_slice_min_component_pixels,
        series_min_component_voxels=series_min_component_voxels,
    )
    return directory


def replace_model_file(model_dir: Path, copy_to: Path, name: str, content: bytes) -> Path:
    """A copy of `model_dir` in `copy_to` with file `name` replaced by `content` and its sha256 updated in the
    manifest, as an operator replacing a file would do: the hash check passes, loading is what must refuse it."""
    shutil.copytree(model_dir, copy_to, dirs_exist_ok=True)
    (copy_to / name).write_bytes(content)
    manifest = json.loads((copy_to / "manifest.json").read_text())
    manifest["files"][name] = hashlib.sha256(content).hexdigest()
    (copy_to / "manifest.json").write_text(json.dumps(manifest))
    return copy_to


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """Tiny untrained models that call every slice positive."""
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny_models"))


@pytest.fixture(scope="session")
def client(tiny_model_dir: Path) -> Iterator[TestClient]:
    """The app on the tiny models (`EVERY_SLICE`: every slice positive, the segmenter always runs), started
    once per test process; a test file or folder that needs another app defines its own `client`."""
    with running_client(Settings(model_dir=tiny_model_dir)) as client:
        yield client


@pytest.fixture(scope="session")
def predictor(tiny_model_dir: Path) -> Predictor:
    """The tiny models loaded and warmed up, once per test process (tests read them, never change them)."""
    loaded = Predictor.from_model_dir(tiny_model_dir)
    loaded.warm_up()
    return loaded


@pytest.fixture
def flair() -> np.ndarray:
    """The FLAIR channel of the tumor test slice (a fresh copy per test)."""
    return read_slice(TUMOR_SLICE)[:, :, FLAIR_CHANNEL]


@pytest.fixture(scope="session")
def committed_model_dir() -> Path:
    """The trained models shipped in the repository."""
    if not (COMMITTED_MODEL_DIR / "manifest.json").is_file():
        pytest.fail(f"no trained models committed: {COMMITTED_MODEL_DIR / 'manifest.json'} is missing")
    return COMMITTED_MODEL_DIR
