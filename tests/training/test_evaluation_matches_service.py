"""Evaluation measures what the service does: the same slices give the same decisions and masks in both.

`training.evaluate` runs the Keras models eagerly on every slice and gates afterwards; the service compiles the
models (`app.inference.Predictor`) and runs the segmenter on the positives only, synchronously (CLI) or in two stages
through the micro-batcher (HTTP). All three decide through `app.core.gate`.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from app.batching import MicroBatcher
from app.core.model_store import load_models
from app.core.preprocessing import flair_only, preprocess_slice
from app.inference import Predictor
from tests.conftest import TEST_DATA, make_tiny_model_dir, read_slice
from training.evaluate import gated_masks, predict_slices

SLICES = sorted(path for path in TEST_DATA.rglob("*.jpg"))


def midway(values: np.ndarray) -> float:
    """A threshold halfway between the two middle values, so that about half are over it and none sits on it."""
    ordered = np.sort(values.reshape(-1))
    middle = len(ordered) // 2
    return float((ordered[middle - 1] + ordered[middle]) / 2)


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    slices = np.stack([read_slice(path) for path in SLICES])
    return np.concatenate([slices, flair_only(slices)])


@pytest.fixture(scope="module")
def gated_model_dir(tmp_path_factory, images: np.ndarray) -> Path:
    """Tiny models whose thresholds split these slices: some negative, some positive with part of a mask."""
    probe = make_tiny_model_dir(tmp_path_factory.mktemp("probe"))
    _, classifier, segmenter = load_models(probe)
    probabilities, maps = predict_slices(classifier, segmenter, images)
    return make_tiny_model_dir(
        tmp_path_factory.mktemp("gated"), classifier_threshold=midway(probabilities), mask_threshold=midway(maps)
    )


def test_evaluation_and_service_give_the_same_decisions_and_masks(gated_model_dir: Path, images: np.ndarray) -> None:
    manifest, classifier, segmenter = load_models(gated_model_dir)
    classifier_threshold, mask_threshold = manifest.classifier.threshold, manifest.segmenter.threshold
    probabilities, maps = predict_slices(classifier, segmenter, images)
    evaluated = gated_masks(probabilities, maps, classifier_threshold, mask_threshold)
    evaluated_detected = probabilities >= classifier_threshold
    assert 0 < evaluated_detected.sum() < len(images)  # both branches of the gate are exercised

    predictor = Predictor.from_model_dir(gated_model_dir)
    served = predictor.predict(list(images))

    async def through_the_batcher() -> list:
        batcher = MicroBatcher(predictor, max_batch_size=4)
        batcher.start()
        try:
            batch = np.stack([preprocess_slice(image) for image in images])
            return await batcher.submit(batch, [image.shape[:2] for image in images])
        finally:
            await batcher.stop()

    batched = asyncio.run(through_the_batcher())
    for predictions in (served, batched):
        assert [prediction.detected for prediction in predictions] == evaluated_detected.tolist()
        for index, prediction in enumerate(predictions):
            if prediction.detected:
                np.testing.assert_array_equal(prediction.mask, evaluated[index].astype(np.uint8))
                assert prediction.mask.any() and not prediction.mask.all()
            else:
                assert prediction.mask is None and not evaluated[index].any()
        np.testing.assert_allclose([p.probability for p in predictions], probabilities, rtol=1e-5, atol=1e-6)
