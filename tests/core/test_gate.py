"""The gate rule shared by serving and evaluation: classifier threshold -> segmenter -> mask threshold."""

from __future__ import annotations

import numpy as np
import pytest

from app.core.gate import classifier_positive, gate, probability_to_mask
from app.core.preprocessing import preprocess_slice


def test_classifier_positive_is_inclusive_at_the_threshold() -> None:
    np.testing.assert_array_equal(classifier_positive(np.array([0.2, 0.5, 0.51]), 0.5), [False, True, True])


def test_gate_runs_the_segmenter_on_positives_only() -> None:
    calls: list[list[int]] = []

    def segment(positive: np.ndarray) -> np.ndarray:
        calls.append(positive.tolist())
        return np.stack([np.full((4, 4), 0.8 if index == 2 else 0.1, np.float32) for index in positive])

    masks = gate(np.array([0.1, 0.9, 0.7]), segment, [(4, 4), (4, 4), (8, 2)], 0.5, 0.5)

    assert calls == [[1, 2]]
    assert masks[0] is None
    np.testing.assert_array_equal(masks[1], np.zeros((4, 4), np.uint8))  # positive, nothing over the mask threshold
    np.testing.assert_array_equal(masks[2], np.ones((8, 2), np.uint8))  # made at the slice's own size


def test_gate_skips_the_segmenter_when_every_slice_is_negative() -> None:
    def segment(positive: np.ndarray) -> np.ndarray:
        raise AssertionError("the segmenter must not run")

    assert gate(np.array([0.1, 0.2]), segment, [(4, 4), (4, 4)], 0.5, 0.5) == [None, None]


def test_gate_refuses_sizes_that_do_not_match_the_slices() -> None:
    with pytest.raises(ValueError, match="sizes must be one per slice; got 1 sizes for 2 slices"):
        gate(np.array([0.1, 0.2]), lambda positive: positive, [(4, 4)], 0.5, 0.5)


def test_probability_to_mask_resizes_to_height_width() -> None:
    probability = np.zeros((256, 256), np.float32)
    probability[:, :128] = 1.0

    mask = probability_to_mask(probability, (100, 512), threshold=0.5)

    assert mask.shape == (100, 512)
    assert mask.dtype == np.uint8
    assert set(np.unique(mask)) == {0, 1}
    assert mask[:, :250].all()
    assert not mask[:, 262:].any()


def test_probability_to_mask_accepts_channel_axis() -> None:
    probability = np.full((256, 256, 1), 0.7, np.float32)

    mask = probability_to_mask(probability, (30, 40), threshold=0.5)

    assert mask.shape == (30, 40)
    assert mask.all()


def test_probability_to_mask_threshold_is_inclusive() -> None:
    probability = np.array([[0.49, 0.5], [0.51, 0.0]], np.float32)

    mask = probability_to_mask(probability, (2, 2), threshold=0.5)

    np.testing.assert_array_equal(mask, [[0, 1], [1, 0]])


def test_probability_to_mask_keeps_same_size_map_unresampled() -> None:
    probability = np.random.default_rng(0).random((256, 256)).astype(np.float32)

    mask = probability_to_mask(probability, (256, 256), threshold=0.5)

    np.testing.assert_array_equal(mask, (probability >= 0.5).astype(np.uint8))


def test_probability_to_mask_interpolates_before_thresholding() -> None:
    # A single bright pixel upsampled 4x: linear interpolation gives a smooth blob, not a 4x4 block.
    probability = np.zeros((8, 8), np.float32)
    probability[4, 4] = 1.0

    mask = probability_to_mask(probability, (32, 32), threshold=0.5)

    assert 0 < mask.sum() < 16


def test_a_rectangular_slices_mask_comes_back_where_the_slice_lay_in_its_square() -> None:
    # The model sees a rectangular slice centred on a square (`preprocess_slice`); its map is cut back the same way.
    slice_ = np.zeros((200, 120), np.uint8)
    slice_[50:90, 10:40] = 255  # a block near the left edge
    model_view = preprocess_slice(slice_)[..., 0]  # what the model's grid holds, as a probability map would

    mask = probability_to_mask(model_view, (200, 120), threshold=0.5)

    assert mask.shape == (200, 120)
    assert np.count_nonzero(mask != (slice_ > 0)) <= 0.02 * np.count_nonzero(slice_)  # resampling at the edges only
