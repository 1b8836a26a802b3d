"""The models' outputs on uint8 slices as the service computes them: each slice through the shared
`preprocess_slice`, in batches, the classifier's probability optionally flip-averaged (`app.core.gate.flip_average`).

Training, cross-validation, the comparisons and evaluation all run the models through these functions, so each
measures what is served.
"""

from __future__ import annotations

from collections.abc import Iterator

import keras
import numpy as np

from app.core.gate import flip_average
from app.core.preprocessing import preprocess_slice


def preprocessed_batches(images: np.ndarray, batch_size: int = 16) -> Iterator[np.ndarray]:
    """uint8 slices in batches, each through the shared `preprocess_slice`."""
    for start in range(0, len(images), batch_size):
        yield np.stack([preprocess_slice(image) for image in images[start : start + batch_size]])


def model_outputs(model: keras.Model, images: np.ndarray, batch_size: int = 16) -> np.ndarray:
    """Run `model` on uint8 slices, in batches."""
    return np.concatenate([_run(model, batch) for batch in preprocessed_batches(images, batch_size)])


def predict_slices(
    classifier: keras.Model,
    segmenter: keras.Model,
    images: np.ndarray,
    batch_size: int = 16,
    classifier_flip_average: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Return (tumor probability per slice, mask probability maps (N,256,256)) for uint8 slices, preprocessing each
    batch once for both models; with `classifier_flip_average` the probability is the served mean over the slice and
    its mirror (`app.core.gate.flip_average`)."""
    probabilities, maps = [], []
    for batch in preprocessed_batches(images, batch_size):
        probabilities.append(_classify(classifier, batch, classifier_flip_average))
        maps.append(_run(segmenter, batch)[..., 0])
    return np.concatenate(probabilities), np.concatenate(maps)


def classifier_probabilities(
    classifier: keras.Model, images: np.ndarray, flip_average: bool = False, batch_size: int = 16
) -> np.ndarray:
    """Tumor probability per uint8 slice, as served (see `predict_slices`)."""
    return np.concatenate(
        [_classify(classifier, batch, flip_average) for batch in preprocessed_batches(images, batch_size)]
    )


def _classify(classifier: keras.Model, batch: np.ndarray, with_flip_average: bool) -> np.ndarray:
    if with_flip_average:
        return flip_average(lambda images: _run(classifier, images), batch).reshape(-1)
    return _run(classifier, batch).reshape(-1)


def _run(model: keras.Model, batch: np.ndarray) -> np.ndarray:
    return keras.ops.convert_to_numpy(model(batch, training=False))
