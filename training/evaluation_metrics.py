"""The figures of the served pipeline on held-out slices: per-slice answers, per-patient volume Dice, the
tumor-free slices at the tumor's edge, and 95 % intervals from patients drawn again (`evaluate_split` gathers them).
"""

from __future__ import annotations

import numpy as np

from training.data import SliceArrays
from training.served_masks import clean_by_patient, gated_masks, masks_shown_alone

# Tumor-free slices this many slices or fewer from an annotated tumor slice count as the tumor's edge.
TUMOR_EDGE_SLICES = 4
BOOTSTRAP_DRAWS = 2000
# The alpha of the "tversky_score" figure (missed tumor weighs 0.7, false tumor 0.3), whatever alpha the segmenter was
# trained with (the served one: 0.5): every committed evaluation was measured at 0.7, so the key keeps its name and
# this value (newcomer review 45 F12).
TVERSKY_SCORE_ALPHA = 0.7


def dice(truth: np.ndarray, predicted: np.ndarray) -> float:
    """Dice of two binary arrays; 1.0 when both are empty."""
    total = int(truth.sum()) + int(predicted.sum())
    if total == 0:
        return 1.0
    return 2.0 * float(np.logical_and(truth, predicted).sum()) / total


def tversky(truth: np.ndarray, predicted: np.ndarray, alpha: float = 0.7) -> float:
    true_positive = float(np.logical_and(truth, predicted).sum())
    false_negative = float(np.logical_and(truth, ~predicted).sum())
    false_positive = float(np.logical_and(~truth, predicted).sum())
    denominator = true_positive + alpha * false_negative + (1 - alpha) * false_positive
    return 1.0 if denominator == 0 else true_positive / denominator


def false_mask_rate(labels: np.ndarray, masks: np.ndarray) -> float | None:
    """Share of the tumor-free slices (`labels == 0`) whose mask is not empty; None when there is none, since a rate
    of no slices is no figure (newcomer review 45 F12: the one definition training and evaluation share)."""
    tumor_free = np.asarray(labels) == 0
    if not tumor_free.any():
        return None
    return float(masks[tumor_free].reshape(int(tumor_free.sum()), -1).any(axis=1).mean())


def volume_dice_by_patient(arrays: SliceArrays, masks: np.ndarray) -> dict[str, float]:
    """Dice of each patient's whole stack of slices (the figure Buda et al. 2019 report)."""
    truth = arrays.masks > 0
    return {
        patient: dice(truth[arrays.patient_ids == patient], masks[arrays.patient_ids == patient])
        for patient in sorted(set(arrays.patient_ids))
    }


def decision_metrics(labels: np.ndarray, predicted: np.ndarray) -> dict:
    """Sensitivity, specificity, accuracy and confusion matrix of yes/no answers per slice."""
    predicted, positive = np.asarray(predicted, dtype=bool), np.asarray(labels) > 0
    true_positive = int(np.sum(predicted & positive))
    true_negative = int(np.sum(~predicted & ~positive))
    false_positive = int(np.sum(predicted & ~positive))
    false_negative = int(np.sum(~predicted & positive))
    return {
        "slices": int(len(labels)),
        "accuracy": (true_positive + true_negative) / len(labels),
        "sensitivity": true_positive / max(1, true_positive + false_negative),
        "specificity": true_negative / max(1, true_negative + false_positive),
        "confusion_matrix": {"tn": true_negative, "fp": false_positive, "fn": false_negative, "tp": true_positive},
    }


def classification_metrics(labels: np.ndarray, probabilities: np.ndarray, threshold: float) -> dict:
    from sklearn.metrics import roc_auc_score

    positive = labels > 0
    auc = float(roc_auc_score(positive, probabilities)) if 0 < positive.sum() < len(labels) else None
    return {**decision_metrics(labels, probabilities >= threshold), "roc_auc": auc}


def segmentation_metrics(arrays: SliceArrays, masks: np.ndarray) -> dict:
    truth = arrays.masks > 0
    labels = arrays.labels > 0
    by_patient = volume_dice_by_patient(arrays, masks)
    tumor_slices = [dice(truth[index], masks[index]) for index in np.flatnonzero(labels)]
    return {
        "volume_dice_mean": float(np.mean(list(by_patient.values()))),
        "volume_dice_median": float(np.median(list(by_patient.values()))),
        "volume_dice_by_patient": by_patient,
        "tumor_slice_dice_mean": float(np.mean(tumor_slices)) if tumor_slices else None,
        "nonempty_mask_rate_on_tumor_free_slices": false_mask_rate(arrays.labels, masks),
        "tversky_score": tversky(truth, masks, alpha=TVERSKY_SCORE_ALPHA),
    }


def tumor_free_answers_by_distance(arrays: SliceArrays, called_tumor: np.ndarray, shown_mask: np.ndarray) -> dict:
    """How the answers on tumor-free slices fare at the tumor's edge (1 to `TUMOR_EDGE_SLICES` slices from an
    annotated tumor slice, where the annotation's first and last slices are least sure) and away from it.

    `called_tumor` is the classifier's yes/no per slice, `shown_mask` whether the answer carries a non-empty mask.
    """
    distance = arrays.slices_to_tumor()
    tumor_free = arrays.labels == 0
    called_tumor, shown_mask = np.asarray(called_tumor, bool), np.asarray(shown_mask, bool)
    figures = {}
    for name, near in (("tumor_edge", True), ("away_from_tumor", False)):
        rows = tumor_free & ((distance <= TUMOR_EDGE_SLICES) == near)
        count = int(rows.sum())
        figures[name] = {
            "tumor_free_slices": count,
            "specificity": float(1 - called_tumor[rows].mean()) if count else None,
            "false_positives": int(called_tumor[rows].sum()),
            "nonempty_mask_rate": float(shown_mask[rows].mean()) if count else None,
        }
    return {"tumor_edge_slices": TUMOR_EDGE_SLICES, **figures}


def patient_bootstrap_intervals(
    arrays: SliceArrays,
    called_tumor: np.ndarray,
    shown_mask_alone: np.ndarray,
    series_masks: np.ndarray,
    draws: int = BOOTSTRAP_DRAWS,
    seed: int = 2019,
) -> dict:
    """95 % intervals of the headline figures with the patients drawn again, with replacement: how far the figures
    of a handful of patients could move on another handful like them (slices of one patient are not independent, so
    patients, not slices, are drawn)."""
    patients = sorted(set(arrays.patient_ids))
    labels = arrays.labels > 0
    called_tumor, shown_mask_alone = np.asarray(called_tumor, bool), np.asarray(shown_mask_alone, bool)
    counts = []
    for patient in patients:
        rows = arrays.patient_ids == patient
        tumor, tumor_free = rows & labels, rows & ~labels
        counts.append(
            [
                (called_tumor & tumor).sum(),
                tumor.sum(),
                (~called_tumor & tumor_free).sum(),
                tumor_free.sum(),
                (shown_mask_alone & tumor_free).sum(),
            ]
        )
    counts = np.asarray(counts, dtype=np.float64)
    volume_dice = np.asarray(list(volume_dice_by_patient(arrays, series_masks).values()))
    picks = np.random.default_rng(seed).integers(0, len(patients), size=(draws, len(patients)))
    found, tumor, rejected, tumor_free, masked = counts[picks].sum(axis=1).T
    with np.errstate(invalid="ignore", divide="ignore"):
        figures = {
            "sensitivity": found / tumor,
            "specificity": rejected / tumor_free,
            "nonempty_mask_rate_on_tumor_free_slices_alone": masked / tumor_free,
            "volume_dice_mean": volume_dice[picks].mean(axis=1),
        }

    def interval(values: np.ndarray) -> list[float] | None:
        values = values[np.isfinite(values)]
        return [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))] if len(values) else None

    return {"draws": draws, **{name: interval(values) for name, values in figures.items()}}


def evaluate_split(
    arrays: SliceArrays,
    probabilities: np.ndarray,
    maps: np.ndarray,
    classifier_threshold: float,
    mask_threshold: float,
    min_component_voxels: int = 0,
    single_slice_mask_min_probability: float = 0.0,
    single_slice_min_component_pixels: int = 0,
) -> dict:
    """Figures of the served pipeline on `arrays`: per series (cleaned up) and per single slice (as sent alone).

    A single slice's answer is the classifier's, with its mask only from `single_slice_mask_min_probability` on and
    without its pieces under `single_slice_min_component_pixels`; in a series a slice is positive when its mask
    survives the clean-up (`app.series.result.clean_series`), so `series_answers` measures those answers.
    """
    gated = gated_masks(probabilities, maps, classifier_threshold, mask_threshold)
    single_slice_masks = masks_shown_alone(
        probabilities, gated, single_slice_mask_min_probability, single_slice_min_component_pixels
    )
    masks = clean_by_patient(arrays, gated, min_component_voxels)
    ungated = maps >= mask_threshold
    ungated_rate = float(np.mean([ungated[i].any() for i in np.flatnonzero(arrays.labels == 0)] or [0.0]))
    called_tumor = probabilities >= classifier_threshold
    shown_mask_alone = single_slice_masks.reshape(len(single_slice_masks), -1).any(axis=1)
    return {
        "patients": len(set(arrays.patient_ids)),
        "classifier": classification_metrics(arrays.labels, probabilities, classifier_threshold),
        "series_answers": decision_metrics(arrays.labels, masks.reshape(len(masks), -1).any(axis=1)),
        "segmentation": segmentation_metrics(arrays, masks),
        "segmentation_single_slices": segmentation_metrics(arrays, single_slice_masks),
        "segmentation_single_slices_every_positive": segmentation_metrics(arrays, gated),
        "segmenter_alone_nonempty_mask_rate_on_tumor_free_slices": ungated_rate,
        "tumor_free_single_slices_by_distance_to_tumor": tumor_free_answers_by_distance(
            arrays, called_tumor, shown_mask_alone
        ),
        "intervals_95_patient_bootstrap": patient_bootstrap_intervals(arrays, called_tumor, shown_mask_alone, masks),
    }
