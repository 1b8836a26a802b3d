"""Choosing the served pipeline's thresholds and settings on validation slices only, before they are frozen and
applied to the test patients: the classifier threshold, the mask threshold, the series clean-up size and the rules
of a slice answered alone, each the candidate with the best validation figure. A recipe's rule may bound what the
last three may cost (`ChoiceLimits`): then only candidates within the bounds compete.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.data import DatasetError, SliceArrays
from training.evaluation_metrics import (
    classification_metrics,
    decision_metrics,
    segmentation_metrics,
    volume_dice_by_patient,
)
from training.served_masks import clean_by_patient, gated_masks, masks_shown_alone

MASK_THRESHOLD_CANDIDATES = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
# Series clean-up: smallest 3-D component kept, in voxels of the 256 x 256 grid (0 keeps everything).
MIN_COMPONENT_VOXEL_CANDIDATES = (0, 25, 50, 100, 200, 400, 800, 1600)
# A slice answered alone shows its mask only from this classifier probability on (0: whenever it is positive).
SINGLE_SLICE_MASK_MIN_PROBABILITY_CANDIDATES = (0.0, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5)
# ... and then keeps only its mask pieces of at least this many pixels of the 256 x 256 grid (0: every piece).
SINGLE_SLICE_MIN_COMPONENT_PIXEL_CANDIDATES = (0, 25, 50, 100, 150, 200, 300, 400)
THRESHOLD_MARGIN = 1e-4  # relative: the classifier threshold lies this far below the score that decides it
FALSE_MASK_RATE = "nonempty_mask_rate_on_tumor_free_slices"


@dataclass(frozen=True)
class ChoiceLimits:
    """What the series clean-up and a lone slice's mask rules may cost on validation to be chosen. Choosing by Dice
    alone can buy a hair of Dice with sensitivity (a large clean-up drops small true pieces) or with false masks; a
    rule written before a run names these bounds. The defaults bound nothing."""

    series_min_sensitivity: float = 0.0
    series_max_false_mask_rate: float = 1.0
    single_slice_max_false_mask_rate: float = 1.0


NO_LIMITS = ChoiceLimits()


def best_within(figures: dict[str, dict[str, float]], allowed: Callable[[dict[str, float]], bool], what: str) -> str:
    """The candidate with the highest volume Dice among the `allowed` ones (ties: the smaller candidate)."""
    kept = [key for key, figure in figures.items() if allowed(figure)]
    if not kept:
        raise DatasetError(f"no {what} candidate stays within the limits on these slices: {figures}")
    return max(kept, key=lambda key: (figures[key]["volume_dice_mean"], -float(key)))


def read_threshold_slices(path: str | Path, flip_average: bool = False) -> tuple[np.ndarray, np.ndarray, set[str]]:
    """(labels, probabilities, patient ids) of slices predicted by models that never saw them: the
    `out_of_fold.npz` of `training.cross_validation combine`; with `flip_average` the flip-averaged probabilities.

    Raises
    ------
    training.data.DatasetError
        If flip averages are asked for and the file has none (written before they were saved).
    """
    key = "flip_average_probabilities" if flip_average else "probabilities"
    with np.load(path) as saved:
        if key not in saved:
            raise DatasetError(f"{path} holds no {key}: run training.cross_validation combine again")
        return saved["labels"], saved[key], set(saved["patient_ids"].tolist())


def read_validation_out_of_fold(path: str | Path, validation: SliceArrays, flip_average: bool = False) -> np.ndarray:
    """The validation slices' probabilities, in `validation`'s order, by models that never saw their patient: the
    `out_of_fold.npz` of `training.cross_validation combine` over `refit-folds` runs. They stand in for the
    probabilities of a classifier refit with the validation patients among its training patients, whose own would
    be those of slices it learnt.

    Raises
    ------
    training.data.DatasetError
        If the file does not hold exactly the validation slices (with their labels), or lacks what is asked for.
    """
    key = "flip_average_probabilities" if flip_average else "probabilities"
    with np.load(path) as saved:
        for needed in (key, "slice_numbers"):
            if needed not in saved:
                raise DatasetError(f"{path} holds no {needed}: run training.cross_validation combine again")
        keys = zip(saved["patient_ids"].tolist(), saved["slice_numbers"].tolist(), strict=True)
        rows = zip(keys, saved["labels"], saved[key], strict=True)
        found = {slice_key: (label, probability) for slice_key, label, probability in rows}
    wanted = list(zip(validation.patient_ids.tolist(), validation.slice_numbers.tolist(), strict=True))
    if set(found) != set(wanted) or len(found) != len(wanted):
        raise DatasetError(f"{path} does not hold exactly the {len(wanted)} slices of the validation patients")
    labels = np.array([found[slice_key][0] for slice_key in wanted], np.float32)
    if not np.array_equal(labels, validation.labels):
        raise DatasetError(f"{path} labels the validation slices otherwise than their masks do")
    return np.array([found[slice_key][1] for slice_key in wanted], np.float32)


def choose_classifier_threshold(labels: np.ndarray, probabilities: np.ndarray, target_sensitivity: float) -> float:
    """Highest threshold whose sensitivity on these slices is at least `target_sensitivity`, less a margin.

    The threshold lies just below the score of the positive that decides it (`THRESHOLD_MARGIN`, relative), not on
    it: the same slice scores differently in the 8th digit under another runtime, thread count or machine (4.5e-8
    measured for 1.5.0's on a rerun; 1.5.1 fixed it), and on the score itself that slice, and the sensitivity, would
    flip.

    Raises
    ------
    training.data.DatasetError
        (a `ValueError`) If there is no tumor slice: no threshold has a sensitivity then, and the 0.5 once returned
        would have been served without a word (newcomer review 45 F14).
    """
    positives = np.sort(probabilities[labels > 0])
    if len(positives) == 0:
        raise DatasetError(
            f"at least one tumor slice is required to choose the classifier threshold; got 0 of {len(labels)} slices"
        )
    # Keeping the k highest-scoring positives at a threshold just below the k-th highest score.
    allowed_misses = int(np.floor((1.0 - target_sensitivity) * len(positives)))
    return float(positives[allowed_misses]) * (1.0 - THRESHOLD_MARGIN)


def figures_at_target_sensitivity(labels: np.ndarray, probabilities: np.ndarray, target_sensitivity: float) -> dict:
    """ROC AUC, and specificity and sensitivity at the threshold chosen for `target_sensitivity` on these slices."""
    threshold = choose_classifier_threshold(labels, probabilities, target_sensitivity)
    metrics = classification_metrics(labels, probabilities, threshold)
    return {key: metrics[key] for key in ("roc_auc", "sensitivity", "specificity")} | {"threshold": threshold}


def choose_mask_threshold(
    arrays: SliceArrays, probabilities: np.ndarray, maps: np.ndarray, classifier_threshold: float
) -> tuple[float, dict[str, float]]:
    """The mask threshold with the highest mean per-patient volume Dice on these slices, and that Dice for every
    candidate."""
    volume_dice = {}
    for candidate in MASK_THRESHOLD_CANDIDATES:
        masks = gated_masks(probabilities, maps, classifier_threshold, candidate)
        volume_dice[str(candidate)] = float(np.mean(list(volume_dice_by_patient(arrays, masks).values())))
    return float(max(volume_dice, key=volume_dice.get)), volume_dice


def series_figures(arrays: SliceArrays, masks: np.ndarray, min_voxels: int) -> dict[str, float]:
    """Volume Dice, sensitivity and the share of tumor-free slices given a mask, of series answers after a clean-up
    of `min_voxels` (in a series a slice is positive when its mask survives)."""
    cleaned = clean_by_patient(arrays, masks, min_voxels)
    answers = decision_metrics(arrays.labels, cleaned.reshape(len(cleaned), -1).any(axis=1))
    return {
        "volume_dice_mean": float(np.mean(list(volume_dice_by_patient(arrays, cleaned).values()))),
        "sensitivity": answers["sensitivity"],
        FALSE_MASK_RATE: 1.0 - answers["specificity"],
    }


def choose_min_component_voxels(
    arrays: SliceArrays, masks: np.ndarray, limits: ChoiceLimits = NO_LIMITS
) -> tuple[int, dict[str, dict[str, float]]]:
    """The series clean-up size with the highest mean per-patient volume Dice on these slices (ties: the smaller)
    among those within `limits`, and every candidate's figures."""
    figures = {str(size): series_figures(arrays, masks, size) for size in MIN_COMPONENT_VOXEL_CANDIDATES}

    def allowed(figure: dict[str, float]) -> bool:
        return (
            figure["sensitivity"] >= limits.series_min_sensitivity
            and figure[FALSE_MASK_RATE] <= limits.series_max_false_mask_rate
        )

    return int(best_within(figures, allowed, "series clean-up")), figures


def single_slice_figures(
    arrays: SliceArrays, probabilities: np.ndarray, masks: np.ndarray, min_probability: float, min_pixels: int = 0
) -> dict[str, float]:
    """Volume Dice and the share of tumor-free slices given a mask, of slices answered one by one."""
    segmentation = segmentation_metrics(arrays, masks_shown_alone(probabilities, masks, min_probability, min_pixels))
    return {key: segmentation[key] for key in ("volume_dice_mean", FALSE_MASK_RATE)}


def choose_single_slice_mask_min_probability(
    arrays: SliceArrays, probabilities: np.ndarray, masks: np.ndarray, limits: ChoiceLimits = NO_LIMITS
) -> tuple[float, dict[str, dict[str, float]]]:
    """The single-slice mask minimum with the highest mean per-patient volume Dice of slices answered one by one
    (ties: the smaller) among those within `limits`, and for every candidate that Dice and the share of tumor-free
    slices given a mask."""
    figures = {
        str(candidate): single_slice_figures(arrays, probabilities, masks, candidate)
        for candidate in SINGLE_SLICE_MASK_MIN_PROBABILITY_CANDIDATES
    }
    best = best_within(
        figures,
        lambda figure: figure[FALSE_MASK_RATE] <= limits.single_slice_max_false_mask_rate,
        "single-slice mask minimum",
    )
    return float(best), figures


def choose_single_slice_min_component_pixels(
    arrays: SliceArrays,
    probabilities: np.ndarray,
    masks: np.ndarray,
    min_probability: float,
    limits: ChoiceLimits = NO_LIMITS,
) -> tuple[int, dict[str, dict[str, float]]]:
    """With the single-slice mask minimum chosen, the smallest mask piece a slice answered alone keeps: the candidate
    with the highest mean per-patient volume Dice of slices answered one by one (ties: the smaller) among those
    within `limits`, and for every candidate that Dice and the share of tumor-free slices given a mask."""
    figures = {
        str(candidate): single_slice_figures(arrays, probabilities, masks, min_probability, candidate)
        for candidate in SINGLE_SLICE_MIN_COMPONENT_PIXEL_CANDIDATES
    }
    best = best_within(
        figures,
        lambda figure: figure[FALSE_MASK_RATE] <= limits.single_slice_max_false_mask_rate,
        "single-slice smallest piece",
    )
    return int(best), figures
