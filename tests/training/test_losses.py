import numpy as np
import pytest
from keras import ops

from training.losses import dice_coefficient, focal_tversky_loss, tversky_score

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
