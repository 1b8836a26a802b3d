"""Tiny generated datasets in both kaggle_3m forms: the original .tif download and the .jpg/.png development pool."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

PATIENTS = ("TCGA_CS_0001_20000101", "TCGA_DU_0002_20000102", "TCGA_HT_0003_20000103", "TCGA_FG_0004_20000104")
SLICES_PER_PATIENT = 11  # > 9, so numeric and text sorting differ


def synthetic_slice(rng: np.random.Generator, with_tumor: bool) -> tuple[np.ndarray, np.ndarray]:
    """A noisy 'brain' disc, and when `with_tumor` a bright blob with its mask."""
    yy, xx = np.mgrid[:256, :256]
    image = np.where((yy - 128) ** 2 + (xx - 128) ** 2 < 100**2, 90, 0).astype(np.float32)
    image = np.repeat(image[..., None], 3, axis=2) + rng.normal(0, 5, (256, 256, 3))
    mask = np.zeros((256, 256), np.uint8)
    if with_tumor:
        cy, cx = rng.integers(90, 166, size=2)
        blob = (yy - cy) ** 2 + (xx - cx) ** 2 < 20**2
        image[blob] += 110
        mask[blob] = 255
    return np.clip(image, 0, 255).astype(np.uint8), mask


def write_layout(root: Path, original: bool, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    image_suffix, mask_suffix = (".tif", ".tif") if original else (".jpg", ".png")
    for patient in PATIENTS:
        folder = root / patient
        folder.mkdir(parents=True)
        for number in range(1, SLICES_PER_PATIENT + 1):
            image, mask = synthetic_slice(rng, with_tumor=4 <= number <= 8)
            stem = f"{patient}_{number}"
            Image.fromarray(image).save(folder / f"{stem}{image_suffix}", quality=95)
            Image.fromarray(mask).save(folder / f"{stem}_mask{mask_suffix}")
    return root


@pytest.fixture(scope="session")
def dev_layout(tmp_path_factory) -> Path:
    return write_layout(tmp_path_factory.mktemp("kaggle_3m_dev"), original=False)


@pytest.fixture(scope="session")
def original_layout(tmp_path_factory) -> Path:
    return write_layout(tmp_path_factory.mktemp("kaggle_3m"), original=True)


@contextmanager
def keras_runs_eagerly() -> Iterator[None]:
    """Keras fits and predicts step by step, untraced: tracing a tiny model's step took most of a one- or two-epoch
    test run (10 s a run), and what such a test checks (files, state, figures) is the same either way. The tests of
    `test_train_evaluate_export.py` train traced, as `training.train` does."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(keras.Model, "run_eagerly", property(lambda model: True, lambda model, value: None))
        yield


@pytest.fixture
def untraced_keras() -> Iterator[None]:
    """`keras_runs_eagerly` for one test."""
    with keras_runs_eagerly():
        yield
