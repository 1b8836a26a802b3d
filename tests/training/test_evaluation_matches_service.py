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
from training.served_masks import gated_masks
from training.slice_predictions import predict_slices

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


@pytest.fixture(scope="module", params=[False, True], ids=["plain", "flip-average"])
def gated_model_dir(tmp_path_factory, images: np.ndarray, request) -> Path:
    """Tiny models whose thresholds split these slices: some negative, some positive with part of a mask; the
    classifier served plain or as a flip average."""
    probe = make_tiny_model_dir(tmp_path_factory.mktemp("probe"))
    _, classifier, segmenter = load_models(probe)
    probabilities, maps = predict_slices(classifier, segmenter, images, classifier_flip_average=request.param)
    return make_tiny_model_dir(
        tmp_path_factory.mktemp("gated"),
        classifier_threshold=midway(probabilities),
        mask_threshold=midway(maps),
        flip_average=request.param,
    )


def test_evaluation_and_service_give_the_same_decisions_and_masks(gated_model_dir: Path, images: np.ndarray) -> None:
    manifest, classifier, segmenter = load_models(gated_model_dir)
    classifier_threshold, mask_threshold = manifest.classifier.threshold, manifest.segmenter.threshold
    flip = manifest.classifier.flip_average
    probabilities, maps = predict_slices(classifier, segmenter, images, classifier_flip_average=flip)
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


def test_flip_average_is_the_mean_over_each_slice_and_its_mirror(tmp_path: Path, images: np.ndarray) -> None:
    plain = Predictor.from_model_dir(make_tiny_model_dir(tmp_path / "plain"))
    flipped = Predictor.from_model_dir(make_tiny_model_dir(tmp_path / "flip", flip_average=True))
    batch = np.stack([preprocess_slice(image) for image in images])
    mirrored = np.ascontiguousarray(batch[:, :, ::-1])

    expected = (plain.classify(batch) + plain.classify(mirrored)) / 2

    np.testing.assert_allclose(flipped.classify(batch), expected, rtol=1e-5, atol=1e-6)
    # The tiny classifier is not mirror-symmetric, so the average is a different answer from the plain one.
    assert np.abs(flipped.classify(batch) - plain.classify(batch)).max() > 1e-4
    # A slice and its mirror get the same flip-averaged probability.
    np.testing.assert_allclose(flipped.classify(mirrored), flipped.classify(batch), rtol=1e-5, atol=1e-6)
