import numpy as np
import pytest
from keras import ops

from training.losses import dice_coefficient, focal_tversky_loss, tumor_map_loss, tversky_score

# Hand-worked example: truth has 4 positives; prediction overlaps 3 of them fully and adds 1 false pixel, plus 0.5 on
# one more truth pixel. TP = 3.5, FN = 0.5, FP = 1.
TRUTH = np.array([[1, 1, 1, 1, 0, 0]], dtype="float32")
PREDICTION = np.array([[1, 1, 1, 0.5, 1, 0]], dtype="float32")


def test_tversky_score_matches_hand_computation():
    expected = (3.5 + 1) / (3.5 + 0.7 * 0.5 + 0.3 * 1 + 1)  # = 4.5 / 5.15
    assert float(ops.convert_to_numpy(tversky_score(TRUTH, PREDICTION))) == pytest.approx(expected, rel=1e-6)


def test_focal_tversky_loss_matches_hand_computation():
    expected = (1 - 4.5 / 5.15) ** 0.75
    assert float(ops.convert_to_numpy(focal_tversky_loss(TRUTH, PREDICTION))) == pytest.approx(expected, rel=1e-6)


def test_dice_matches_hand_computation():
    expected = (2 * 3.5 + 1) / (4 + 4.5 + 1)
    assert float(ops.convert_to_numpy(dice_coefficient(TRUTH, PREDICTION))) == pytest.approx(expected, rel=1e-6)


def test_perfect_prediction_has_zero_loss_and_unit_scores():
    assert float(ops.convert_to_numpy(focal_tversky_loss(TRUTH, TRUTH))) == pytest.approx(0.0, abs=1e-6)
    assert float(ops.convert_to_numpy(tversky_score(TRUTH, TRUTH))) == pytest.approx(1.0)


def test_missed_tumor_costs_more_than_false_tumor():
    """alpha = 0.7 weights false negatives above false positives."""
    truth = np.array([[1, 1, 0, 0]], dtype="float32")
    missed = np.array([[1, 0, 0, 0]], dtype="float32")
    extra = np.array([[1, 1, 1, 0]], dtype="float32")
    assert float(ops.convert_to_numpy(focal_tversky_loss(truth, missed))) > float(
        ops.convert_to_numpy(focal_tversky_loss(truth, extra))
    )


def test_tumor_map_loss_scores_each_region_and_the_slice_by_hand():
    """One 4 x 4 mask, a 2 x 2 map: the region holding the tumor pixel has target 1, the slice target 1."""
    mask = np.zeros((1, 4, 4, 1), "float32")
    mask[0, 3, 0, 0] = 1.0  # bottom-left region
    found = np.full((1, 2, 2, 1), 0.1, "float32")
    found[0, 1, 0, 0] = 0.8
    misplaced = np.full((1, 2, 2, 1), 0.1, "float32")
    misplaced[0, 0, 1, 0] = 0.8  # the same largest probability, in the wrong region

    def bce(target: float, p: float) -> float:
        return -(target * np.log(p) + (1 - target) * np.log(1 - p))

    expected = (bce(1, 0.8) + 3 * bce(0, 0.1)) / 4 + bce(1, 0.8)
    assert float(ops.convert_to_numpy(tumor_map_loss(mask, found))) == pytest.approx(expected, rel=1e-4)
    # Served alone the two maps give the same slice probability; only the regions tell the right place.
    assert (
        float(ops.convert_to_numpy(tumor_map_loss(mask, misplaced)))
        > float(ops.convert_to_numpy(tumor_map_loss(mask, found))) + 0.5
    )
    # A tumor-free slice: every region and the slice have target 0.
    empty = np.zeros_like(mask)
    expected_empty = (bce(0, 0.8) + 3 * bce(0, 0.1)) / 4 + bce(0, 0.8)
    assert float(ops.convert_to_numpy(tumor_map_loss(empty, found))) == pytest.approx(expected_empty, rel=1e-4)
