"""Evaluate the gated pipeline (segment only where the classifier says tumor) on held-out patients.

    python -m training.evaluate --data-root ../shared/lgg/kaggle_3m_dev \
        --classifier-weights runs/classifier/best.weights.h5 \
        --segmenter-weights runs/segmenter/best.weights.h5 --output-dir runs/evaluation

Thresholds are chosen on the validation patients only, then frozen and applied to the test patients: the classifier
threshold is the highest one that keeps validation sensitivity at or above `--target-sensitivity`, the mask
threshold the one that maximises mean per-patient volume Dice on validation, and so are the series clean-up size,
the classifier probability from which a slice answered alone shows its mask and, after it, the smallest mask piece
such a slice keeps. Writes `evaluation.json` (thresholds and test metrics, the input of `training.export`) and PNG
plots.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import keras
import numpy as np

from app.core.gate import flip_average, gate, mask_shown_alone
from app.core.outline import draw_outline
from app.core.preprocessing import flair_only, preprocess_slice
from app.core.series_postprocessing import drop_small_components
from training.data import DatasetError, SliceArrays, find_slices, load_slices, load_split, usage_errors
from training.models import load_classifier, load_segmenter

logger = logging.getLogger(__name__)
MASK_THRESHOLD_CANDIDATES = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
# Series clean-up: smallest 3-D component kept, in voxels of the 256 x 256 grid (0 keeps everything).
MIN_COMPONENT_VOXEL_CANDIDATES = (0, 25, 50, 100, 200, 400, 800, 1600)
# A slice answered alone shows its mask only from this classifier probability on (0: whenever it is positive).
SINGLE_SLICE_MASK_MIN_PROBABILITY_CANDIDATES = (0.0, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5)
# ... and then keeps only its mask pieces of at least this many pixels of the 256 x 256 grid (0: every piece).
SINGLE_SLICE_MIN_COMPONENT_PIXEL_CANDIDATES = (0, 25, 50, 100, 150, 200, 300, 400)
# Tumor-free slices this many slices or fewer from an annotated tumor slice count as the tumor's edge.
TUMOR_EDGE_SLICES = 4
BOOTSTRAP_DRAWS = 2000
THRESHOLD_MARGIN = 1e-4  # relative: the classifier threshold lies this far below the score that decides it


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


def gated_masks(probabilities, maps, classifier_threshold: float, mask_threshold: float) -> np.ndarray:
    """Boolean masks (N, H, W) of the served pipeline (`app.core.gate.gate`): empty where the classifier is negative."""
    sizes = [tuple(maps.shape[1:3])] * len(maps)
    masks = np.zeros(maps.shape[:3], dtype=bool)
    gated = gate(probabilities, lambda positive: maps[positive], sizes, classifier_threshold, mask_threshold)
    for index, mask in enumerate(gated):
        if mask is not None:
            masks[index] = mask > 0
    return masks


def masks_shown_alone(probabilities, masks: np.ndarray, min_probability: float, min_pixels: int = 0) -> np.ndarray:
    """The gated masks as slices sent one by one get them (`app.series_result.single_slice_answers`): emptied below
    `min_probability`, without their pieces under `min_pixels`."""
    shown = np.zeros_like(masks, dtype=bool)
    for index, probability in enumerate(np.asarray(probabilities).reshape(-1)):
        kept = mask_shown_alone(masks[index], float(probability), min_probability, min_pixels)
        if kept is not None:
            shown[index] = kept
    return shown


def single_slice_figures(
    arrays: SliceArrays, probabilities, masks: np.ndarray, min_probability: float, min_pixels: int = 0
) -> dict[str, float]:
    """Volume Dice and the share of tumor-free slices given a mask, of slices answered one by one."""
    segmentation = segmentation_metrics(arrays, masks_shown_alone(probabilities, masks, min_probability, min_pixels))
    return {key: segmentation[key] for key in ("volume_dice_mean", "nonempty_mask_rate_on_tumor_free_slices")}


def choose_single_slice_mask_min_probability(
    arrays: SliceArrays, probabilities, masks: np.ndarray
) -> tuple[float, dict[str, dict[str, float]]]:
    """The single-slice mask minimum with the highest mean per-patient volume Dice of slices answered one by one
    (ties: the smaller), and for every candidate that Dice and the share of tumor-free slices given a mask."""
    figures = {
        str(candidate): single_slice_figures(arrays, probabilities, masks, candidate)
        for candidate in SINGLE_SLICE_MASK_MIN_PROBABILITY_CANDIDATES
    }
    best = max(figures, key=lambda key: (figures[key]["volume_dice_mean"], -float(key)))
    return float(best), figures


def choose_single_slice_min_component_pixels(
    arrays: SliceArrays, probabilities, masks: np.ndarray, min_probability: float
) -> tuple[int, dict[str, dict[str, float]]]:
    """With the single-slice mask minimum chosen, the smallest mask piece a slice answered alone keeps: the candidate
    with the highest mean per-patient volume Dice of slices answered one by one (ties: the smaller), and for every
    candidate that Dice and the share of tumor-free slices given a mask."""
    figures = {
        str(candidate): single_slice_figures(arrays, probabilities, masks, min_probability, candidate)
        for candidate in SINGLE_SLICE_MIN_COMPONENT_PIXEL_CANDIDATES
    }
    best = max(figures, key=lambda key: (figures[key]["volume_dice_mean"], -int(key)))
    return int(best), figures


def volume_dice_by_patient(arrays: SliceArrays, masks: np.ndarray) -> dict[str, float]:
    """Dice of each patient's whole stack of slices (the figure Buda et al. 2019 report)."""
    truth = arrays.masks > 0
    return {
        patient: dice(truth[arrays.patient_ids == patient], masks[arrays.patient_ids == patient])
        for patient in sorted(set(arrays.patient_ids))
    }


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


def clean_by_patient(arrays: SliceArrays, masks: np.ndarray, min_voxels: int) -> np.ndarray:
    """Series clean-up of each patient's masks as one volume (slices are in volume order, see `find_slices`)."""
    cleaned = masks.copy()
    for patient in set(arrays.patient_ids):
        rows = np.flatnonzero(arrays.patient_ids == patient)
        in_order = rows[np.argsort(arrays.slice_numbers[rows])]
        cleaned[in_order] = drop_small_components(masks[in_order], min_voxels)
    return cleaned


def choose_min_component_voxels(arrays: SliceArrays, masks: np.ndarray) -> tuple[int, dict[str, float]]:
    """The series clean-up size with the highest mean per-patient volume Dice on these slices (ties: the smaller)."""
    volume_dice = {
        str(candidate): float(
            np.mean(list(volume_dice_by_patient(arrays, clean_by_patient(arrays, masks, candidate)).values()))
        )
        for candidate in MIN_COMPONENT_VOXEL_CANDIDATES
    }
    return int(max(volume_dice, key=lambda key: (volume_dice[key], -int(key)))), volume_dice


def choose_classifier_threshold(labels: np.ndarray, probabilities: np.ndarray, target_sensitivity: float) -> float:
    """Highest threshold whose sensitivity on these slices is at least `target_sensitivity`, less a margin.

    The threshold lies just below the score of the positive that decides it (`THRESHOLD_MARGIN`, relative), not on
    it: the same slice scores differently in the 8th digit under another runtime, thread count or machine (4.5e-8
    measured for 1.5.0's on a rerun; 1.5.1 fixed it), and on the score itself that slice, and the sensitivity, would
    flip.
    """
    positives = np.sort(probabilities[labels > 0])
    if len(positives) == 0:
        return 0.5
    # Keeping the k highest-scoring positives at a threshold just below the k-th highest score.
    allowed_misses = int(np.floor((1.0 - target_sensitivity) * len(positives)))
    return float(positives[allowed_misses]) * (1.0 - THRESHOLD_MARGIN)


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
    empty_slices = np.flatnonzero(~labels)
    false_mask_rate = float(np.mean([masks[index].any() for index in empty_slices])) if len(empty_slices) else None
    return {
        "volume_dice_mean": float(np.mean(list(by_patient.values()))),
        "volume_dice_median": float(np.median(list(by_patient.values()))),
        "volume_dice_by_patient": by_patient,
        "tumor_slice_dice_mean": float(np.mean(tumor_slices)) if tumor_slices else None,
        "nonempty_mask_rate_on_tumor_free_slices": false_mask_rate,
        "tversky_score": tversky(truth, masks),
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
    probabilities,
    maps,
    classifier_threshold,
    mask_threshold,
    min_component_voxels: int = 0,
    single_slice_mask_min_probability: float = 0.0,
    single_slice_min_component_pixels: int = 0,
) -> dict:
    """Figures of the served pipeline on `arrays`: per series (cleaned up) and per single slice (as sent alone).

    A single slice's answer is the classifier's, with its mask only from `single_slice_mask_min_probability` on and
    without its pieces under `single_slice_min_component_pixels`; in a series a slice is positive when its mask
    survives the clean-up (`app.series_result.clean_series`), so `series_answers` measures those answers.
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


def save_plots(output_dir: Path, arrays: SliceArrays, probabilities, masks, history_paths: dict[str, Path]) -> None:
    """Training curves, ROC, confusion matrix, and test slices with true (green) and predicted (red) outlines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay, RocCurveDisplay

    columns = max(1, len(history_paths))
    figure, axes = plt.subplots(1, columns, figsize=(6 * columns, 4), squeeze=False)
    for axis, (name, path) in zip(axes[0], history_paths.items(), strict=False):
        if not path.exists():
            continue
        history = np.genfromtxt(path, delimiter=",", names=True)
        axis.plot(history["epoch"] + 1, history["loss"], label="train loss")
        # Runs before 1.2 logged a validation loss; later runs the served pipeline's validation figures.
        for column in ("val_loss", "val_volume_dice", "val_specificity", "val_auc"):
            if column in history.dtype.names:
                axis.plot(history["epoch"] + 1, history[column], label=column.replace("val_", "validation "))
        axis.set_title(name)
        axis.set_xlabel("epoch")
        axis.legend()
    figure.tight_layout()
    figure.savefig(output_dir / "training_curves.png", dpi=100)
    plt.close(figure)

    labels = arrays.labels > 0
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    RocCurveDisplay.from_predictions(labels, probabilities, ax=axes[0], name="classifier")
    ConfusionMatrixDisplay.from_predictions(labels, masks.reshape(len(masks), -1).any(axis=1), ax=axes[1])
    axes[1].set_title("gated pipeline: slice has a mask")
    figure.tight_layout()
    figure.savefig(output_dir / "roc_confusion.png", dpi=100)
    plt.close(figure)

    chosen = np.flatnonzero(labels)[:: max(1, int(labels.sum()) // 12)][:12]
    figure, axes = plt.subplots(3, 4, figsize=(12, 9))
    for axis, index in zip(axes.ravel(), chosen, strict=False):
        picture = arrays.images[index].copy()
        for mask, colour in ((arrays.masks[index] > 0, (0, 255, 0)), (masks[index], (255, 0, 0))):
            draw_outline(picture, mask, colour)
        axis.imshow(picture)
        axis.set_title(f"p={probabilities[index]:.2f} dice={dice(arrays.masks[index] > 0, masks[index]):.2f}")
        axis.axis("off")
    figure.tight_layout()
    figure.savefig(output_dir / "test_slices.png", dpi=100)
    plt.close(figure)


def evaluate(args: argparse.Namespace) -> dict:
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    split = load_split(Path(args.split))
    # A candidate judged before any test figure is seen: the test patients are not even read.
    patients = set(split["validation"]) if args.validation_only else set(split["validation"]) | set(split["test"])
    records = [record for record in find_slices(args.data_root) if record.patient_id in patients]
    arrays = load_slices(records)
    validation, test = arrays.subset(split["validation"]), arrays.subset(split["test"])
    classifier = load_classifier(args.classifier_weights)
    segmenter = load_segmenter(args.segmenter_weights)

    flip = args.classifier_flip_average
    validation_probabilities, validation_maps = predict_slices(
        classifier, segmenter, validation.images, classifier_flip_average=flip
    )
    threshold_labels, threshold_probabilities, threshold_patients = validation.labels, validation_probabilities, 0
    if args.threshold_slices:
        labels, probabilities, patients = read_threshold_slices(args.threshold_slices, flip)
        if patients & (set(split["validation"]) | set(split["test"])):
            raise DatasetError(f"{args.threshold_slices} holds validation or test patients: it must not choose")
        threshold_labels = np.concatenate([threshold_labels, labels])
        threshold_probabilities = np.concatenate([threshold_probabilities, probabilities])
        threshold_patients = len(patients)
    classifier_threshold = choose_classifier_threshold(
        threshold_labels, threshold_probabilities, args.target_sensitivity
    )
    mask_threshold, validation_dice = choose_mask_threshold(
        validation, validation_probabilities, validation_maps, classifier_threshold
    )

    validation_gated = gated_masks(validation_probabilities, validation_maps, classifier_threshold, mask_threshold)
    min_component_voxels, validation_cleanup_dice = choose_min_component_voxels(validation, validation_gated)
    single_slice_min_probability, validation_single_slice_figures = choose_single_slice_mask_min_probability(
        validation, validation_probabilities, validation_gated
    )
    single_slice_min_pixels, validation_single_slice_pixel_figures = choose_single_slice_min_component_pixels(
        validation, validation_probabilities, validation_gated, single_slice_min_probability
    )
    thresholds = (
        classifier_threshold,
        mask_threshold,
        min_component_voxels,
        single_slice_min_probability,
        single_slice_min_pixels,
    )

    result = {
        "thresholds": {"classifier": classifier_threshold, "mask": mask_threshold},
        "classifier_flip_average": flip,
        "classifier_threshold_chosen_on": {
            "validation_patients": len(split["validation"]),
            "out_of_fold_patients": threshold_patients,
            "slices": len(threshold_labels),
        },
        "series_min_component_voxels": min_component_voxels,
        "single_slice_mask_min_probability": single_slice_min_probability,
        "single_slice_min_component_pixels": single_slice_min_pixels,
        "validation": {
            "mask_threshold_volume_dice": validation_dice,
            "min_component_voxels_volume_dice": validation_cleanup_dice,
            "single_slice_mask_min_probability_candidates": validation_single_slice_figures,
            "single_slice_min_component_pixels_candidates": validation_single_slice_pixel_figures,
            **evaluate_split(validation, validation_probabilities, validation_maps, *thresholds),
        },
    }
    if args.validation_only:
        # What a recipe's rule is judged on before anything is adopted, FLAIR alone too; never read by export.
        flair = predict_slices(classifier, segmenter, flair_only(validation.images), classifier_flip_average=flip)
        result["validation"]["flair_only"] = evaluate_split(validation, *flair, *thresholds)
        (output_dir / "validation_evaluation.json").write_text(json.dumps(result, indent=2) + "\n")
        return result

    test_probabilities, test_maps = predict_slices(classifier, segmenter, test.images, classifier_flip_average=flip)
    flair_probabilities, flair_maps = predict_slices(
        classifier, segmenter, flair_only(test.images), classifier_flip_average=flip
    )
    result["metrics"] = {
        "split": "test",
        **evaluate_split(test, test_probabilities, test_maps, *thresholds),
        "flair_only": evaluate_split(test, flair_probabilities, flair_maps, *thresholds),
    }
    (output_dir / "evaluation.json").write_text(json.dumps(result, indent=2) + "\n")
    if not args.no_plots:
        runs = Path(args.classifier_weights).parent.parent
        histories = dict(args.history) or {path.parent.name: path for path in sorted(runs.glob("*/history.csv"))}
        save_plots(
            output_dir,
            test,
            test_probabilities,
            gated_masks(test_probabilities, test_maps, classifier_threshold, mask_threshold),
            histories,
        )
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--classifier-weights", required=True)
    parser.add_argument("--segmenter-weights", required=True)
    parser.add_argument("--split", default="models/split.json")
    parser.add_argument("--output-dir", default="runs/evaluation")
    parser.add_argument("--target-sensitivity", type=float, default=0.95)
    parser.add_argument(
        "--threshold-slices",
        default=None,
        metavar="OUT_OF_FOLD_NPZ",
        help="out-of-fold predictions of training patients (training.cross_validation) that join the validation "
        "slices in choosing the classifier threshold",
    )
    parser.add_argument(
        "--classifier-flip-average",
        action="store_true",
        help="the classifier's probability is the mean over each slice and its left-right mirror, as the service "
        "computes it when the manifest says flip_average (training.export carries this choice into it)",
    )
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument(
        "--validation-only",
        action="store_true",
        help="judge a candidate on the validation patients alone (with FLAIR alone too) and write "
        "validation_evaluation.json; the test patients are not read, so a recipe is decided before any test figure",
    )
    parser.add_argument(
        "--history",
        action="append",
        default=[],
        type=lambda text: (text.partition("=")[0], Path(text.partition("=")[2])),
        metavar="NAME=HISTORY_CSV",
        help="training histories to plot (default: */history.csv beside the classifier's run folder)",
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    parser = build_parser()
    with usage_errors(parser.prog):
        result = evaluate(parser.parse_args(argv))
    if "metrics" not in result:
        validation = {key: value for key, value in result["validation"].items() if key != "flair_only"}
        logger.info("validation metrics: %s", json.dumps(validation, default=str)[:2000])
        return
    summary = {key: value for key, value in result["metrics"].items() if key != "flair_only"}
    logger.info("test metrics: %s", json.dumps(summary["segmentation"] | summary["classifier"], default=str)[:2000])


if __name__ == "__main__":
    main()
