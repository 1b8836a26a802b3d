"""The real LGG slices committed under tests/data and how to read them, without TensorFlow: `tests.conftest` re-exports
them, and `python -m tests.example_files` (`make examples`) and `tests.dicom.builders` import them from here, so that
writing the example files does not import TensorFlow and Keras (about 5 s a run) only to read a few JPEGs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

TEST_DATA = Path(__file__).resolve().parent / "data" / "lgg"
TUMOR_SLICE = TEST_DATA / "TCGA_DU_A5TW_19980228" / "TCGA_DU_A5TW_19980228_22.jpg"
FLAIR_CHANNEL = 1  # of a kaggle_3m slice: pre-contrast, FLAIR, post-contrast
TUMOR_SERIES = [TEST_DATA / "TCGA_DU_A5TW_19980228" / f"TCGA_DU_A5TW_19980228_{n}.jpg" for n in (20, 21, 22)]
# Eight slices from the nearest tumor slice of the same held-out patient, with a full brain section in view.
TUMOR_FREE_SLICE = TEST_DATA / "TCGA_DU_A5TW_19980228" / "TCGA_DU_A5TW_19980228_8.jpg"


def mask_path_of(image_path: Path) -> Path:
    return image_path.with_name(f"{image_path.stem}_mask.png")


def read_slice(image_path: Path) -> np.ndarray:
    """uint8 256x256x3 (pre-contrast, FLAIR, post-contrast)."""
    return np.asarray(Image.open(image_path))


def read_truth(image_path: Path) -> np.ndarray:
    """uint8 0/1 ground-truth mask of a committed slice."""
    return (np.asarray(Image.open(mask_path_of(image_path))) > 127).astype(np.uint8)
