"""Evaluate the gated pipeline (segment only where the classifier says tumor) on held-out patients.

    python -m training.evaluate --data-root ../shared/lgg/kaggle_3m_dev \
        --classifier-weights runs/classifier/best.weights.h5 \
        --segmenter-weights runs/segmenter/best.weights.h5 --output-dir runs/evaluation

Thresholds are chosen on the validation patients only (the classifier's, with `--threshold-slices`, also on
out-of-fold training patients; for a classifier refit on the validation patients too, `--validation-out-of-fold`
gives their probabilities by models that never saw them), then frozen and applied to the test patients: the
classifier threshold is the highest one that keeps sensitivity on those slices at or above `--target-sensitivity`,
the mask threshold the one that maximises mean per-patient volume Dice on validation, and so are the series clean-up
size, the classifier probability from which a slice answered alone shows its mask and, after it, the smallest mask
piece such a slice keeps (`--series-min-sensitivity` and the `--*-max-false-mask-rate` options bound what these may
cost on validation, when a recipe's rule says so). Writes `evaluation.json` (thresholds and test metrics, the input
of `training.export`) and PNG plots.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import keras
import numpy as np

from app.core.preprocessing import flair_only
from training.data import DatasetError, SliceArrays, find_slices, load_slices, load_split, usage_errors
from training.evaluation_metrics import evaluate_split
from training.evaluation_plots import save_plots
from training.models import load_classifier, load_segmenter
from training.pipeline_choices import (
    NO_LIMITS,
    ChoiceLimits,
    choose_classifier_threshold,
    choose_mask_threshold,
    choose_min_component_voxels,
    choose_single_slice_mask_min_probability,
    choose_single_slice_min_component_pixels,
    read_threshold_slices,
    read_validation_out_of_fold,
)
from training.served_masks import gated_masks
from training.slice_predictions import predict_slices

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PipelineChoices:
    """What `evaluate` chooses on the validation patients and the service then serves (named as `evaluate_split`'s
    parameters, so `asdict` passes them)."""

    classifier_threshold: float
    mask_threshold: float
    min_component_voxels: int
    single_slice_mask_min_probability: float
    single_slice_min_component_pixels: int


def choose_pipeline(
    validation: SliceArrays,
    probabilities: np.ndarray,
    maps: np.ndarray,
    threshold_labels: np.ndarray,
    threshold_probabilities: np.ndarray,
    target_sensitivity: float,
    limits: ChoiceLimits = NO_LIMITS,
) -> tuple[PipelineChoices, dict]:
    """The served pipeline's settings, each chosen on validation after the one before it (classifier threshold on
    the `threshold_*` slices; the last three within `limits`), and the validation figures each was chosen by."""
    classifier_threshold = choose_classifier_threshold(threshold_labels, threshold_probabilities, target_sensitivity)
    mask_threshold, mask_dice = choose_mask_threshold(validation, probabilities, maps, classifier_threshold)
    gated = gated_masks(probabilities, maps, classifier_threshold, mask_threshold)
    min_component_voxels, cleanup_figures = choose_min_component_voxels(validation, gated, limits)
    single_slice_min_probability, probability_figures = choose_single_slice_mask_min_probability(
        validation, probabilities, gated, limits
    )
    single_slice_min_pixels, pixel_figures = choose_single_slice_min_component_pixels(
        validation, probabilities, gated, single_slice_min_probability, limits
    )
    choices = PipelineChoices(
        classifier_threshold,
        mask_threshold,
        min_component_voxels,
        single_slice_min_probability,
        single_slice_min_pixels,
    )
    figures = {
        "mask_threshold_volume_dice": mask_dice,
        "min_component_voxels_volume_dice": {
            size: figure["volume_dice_mean"] for size, figure in cleanup_figures.items()
        },
        "min_component_voxels_candidates": cleanup_figures,
        "single_slice_mask_min_probability_candidates": probability_figures,
        "single_slice_min_component_pixels_candidates": pixel_figures,
    }
    return choices, figures


def evaluate(args: argparse.Namespace) -> dict:
    """Choose the pipeline's settings on validation, then (unless `--validation-only`) measure the test patients;
    the result is written to the output folder and returned."""
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
    limits = ChoiceLimits(
        args.series_min_sensitivity, args.series_max_false_mask_rate, args.single_slice_max_false_mask_rate
    )

    flip = args.classifier_flip_average
    validation_probabilities, validation_maps = predict_slices(
        classifier, segmenter, validation.images, classifier_flip_average=flip
    )
    if args.validation_out_of_fold:
        # A classifier refit on the validation patients: models that never saw them judge them in its place.
        validation_probabilities = read_validation_out_of_fold(args.validation_out_of_fold, validation, flip)
    threshold_labels, threshold_probabilities, threshold_patients = classifier_threshold_slices(
        args, split, validation.labels, validation_probabilities
    )
    choices, choice_figures = choose_pipeline(
        validation,
        validation_probabilities,
        validation_maps,
        threshold_labels,
        threshold_probabilities,
        args.target_sensitivity,
        limits,
    )
    served = asdict(choices)

    result = {
        "thresholds": {"classifier": choices.classifier_threshold, "mask": choices.mask_threshold},
        "classifier_flip_average": flip,
        "classifier_threshold_chosen_on": {
            "validation_patients": len(split["validation"]),
            "out_of_fold_patients": threshold_patients,
            "slices": len(threshold_labels),
            "validation_out_of_fold": bool(args.validation_out_of_fold),
        },
        "choice_limits": asdict(limits),
        "series_min_component_voxels": choices.min_component_voxels,
        "single_slice_mask_min_probability": choices.single_slice_mask_min_probability,
        "single_slice_min_component_pixels": choices.single_slice_min_component_pixels,
        "validation": {
            **choice_figures,
            **evaluate_split(validation, validation_probabilities, validation_maps, **served),
        },
    }
    if args.validation_only:
        # What a recipe's rule is judged on before anything is adopted, FLAIR alone too (not for a refit
        # classifier, which learnt these patients); never read by export.
        if not args.validation_out_of_fold:
            flair = predict_slices(classifier, segmenter, flair_only(validation.images), classifier_flip_average=flip)
            result["validation"]["flair_only"] = evaluate_split(validation, *flair, **served)
        (output_dir / "validation_evaluation.json").write_text(json.dumps(result, indent=2) + "\n")
        return result

    result["metrics"] = measure_test(args, classifier, segmenter, test, choices, output_dir)
    (output_dir / "evaluation.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def classifier_threshold_slices(
    args: argparse.Namespace, split: dict[str, list[str]], labels: np.ndarray, probabilities: np.ndarray
) -> tuple[np.ndarray, np.ndarray, int]:
    """The slices the classifier threshold is chosen on (labels, probabilities) and how many out-of-fold training
    patients joined the validation patients' there (`--threshold-slices`)."""
    if not args.threshold_slices:
        return labels, probabilities, 0
    fold_labels, fold_probabilities, patients = read_threshold_slices(
        args.threshold_slices, args.classifier_flip_average
    )
    if patients & (set(split["validation"]) | set(split["test"])):
        raise DatasetError(f"{args.threshold_slices} holds validation or test patients: it must not choose")
    return np.concatenate([labels, fold_labels]), np.concatenate([probabilities, fold_probabilities]), len(patients)


def measure_test(
    args: argparse.Namespace,
    classifier: keras.Model,
    segmenter: keras.Model,
    test: SliceArrays,
    choices: PipelineChoices,
    output_dir: Path,
) -> dict:
    """The test patients' figures (FLAIR alone too) with the settings chosen on validation, and the plots."""
    flip = args.classifier_flip_average
    served = asdict(choices)
    probabilities, maps = predict_slices(classifier, segmenter, test.images, classifier_flip_average=flip)
    flair = predict_slices(classifier, segmenter, flair_only(test.images), classifier_flip_average=flip)
    if not args.no_plots:
        runs = Path(args.classifier_weights).parent.parent
        histories = dict(args.history) or {path.parent.name: path for path in sorted(runs.glob("*/history.csv"))}
        masks = gated_masks(probabilities, maps, choices.classifier_threshold, choices.mask_threshold)
        save_plots(output_dir, test, probabilities, masks, histories)
    return {
        "split": "test",
        **evaluate_split(test, probabilities, maps, **served),
        "flair_only": evaluate_split(test, *flair, **served),
    }


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--classifier-weights", required=True)
    parser.add_argument("--segmenter-weights", required=True)
    parser.add_argument("--split", default="models/split.json")
    parser.add_argument("--output-dir", default="runs/evaluation")
    parser.add_argument("--target-sensitivity", type=float, default=0.95)
    out_of_fold = parser.add_mutually_exclusive_group()
    out_of_fold.add_argument(
        "--threshold-slices",
        default=None,
        metavar="OUT_OF_FOLD_NPZ",
        help="out-of-fold predictions of training patients (training.cross_validation) that join the validation "
        "slices in choosing the classifier threshold",
    )
    out_of_fold.add_argument(
        "--validation-out-of-fold",
        default=None,
        metavar="OUT_OF_FOLD_NPZ",
        help="for a classifier refit with the validation patients among its training patients: their "
        "probabilities come from this file of models that never saw them (training.cross_validation combine over "
        "refit-folds runs), for every choice made on validation; the test patients are judged by the refit one",
    )
    parser.add_argument(
        "--classifier-flip-average",
        action="store_true",
        help="the classifier's probability is the mean over each slice and its left-right mirror, as the service "
        "computes it when the manifest says flip_average (training.export carries this choice into it)",
    )
    parser.add_argument(
        "--series-min-sensitivity",
        type=float,
        default=0.0,
        help="the series clean-up size is chosen only among sizes whose validation series sensitivity is at least this",
    )
    parser.add_argument(
        "--series-max-false-mask-rate",
        type=float,
        default=1.0,
        help="... and whose share of tumor-free validation slices keeping a mask in a series is at most this",
    )
    parser.add_argument(
        "--single-slice-max-false-mask-rate",
        type=float,
        default=1.0,
        help="a lone slice's mask settings are chosen only among those giving at most this share of tumor-free "
        "validation slices a mask",
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


def main(argv: list[str] | None = None, prog: str | None = None) -> None:
    """`python -m training.evaluate`, or `brain-tumor evaluate` (`prog`: the name help and errors give the command)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    parser = build_parser(prog)
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
