"""Compare segmenter checkpoints as the service uses them: behind the classifier, on the validation patients.

    python -m training.compare_segmenters --data-root ../shared/lgg/kaggle_3m_dev \
        --classifier-weights runs/classifier/best.weights.h5 \
        --segmenter tumor-only=runs/seg_tumor_only/best.weights.h5 \
        --segmenter with-negatives=runs/seg_negatives/best.weights.h5 --output runs/segmenter_comparison.json

Made to decide how the segmenter trains (tumor slices only, or with tumor-free slices too): in the service it sees
every slice the classifier passes, false positives included, so what counts is the gated pipeline's volume Dice and
how often it draws a mask on a tumor-free slice. Only validation patients are used, so the choice never looks at
the test patients. The classifier threshold is chosen once for all candidates (as in `training.evaluate`), the mask
threshold for each candidate on its own.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from training.checkpoint_comparison import (
    add_combination_arguments,
    average_and_save,
    parse_candidate,
    run_comparison,
    save_probability_mean,
)
from training.data import find_slices, load_slices, load_split
from training.evaluation_metrics import evaluate_split
from training.models import (
    BEST_WEIGHTS_NAME,
    load_classifier,
    load_segmenter,
)
from training.pipeline_choices import choose_classifier_threshold, choose_mask_threshold
from training.run_state import RUN_NAME
from training.slice_predictions import model_outputs

logger = logging.getLogger(__name__)


def training_summary(weights: Path) -> dict | None:
    """The `run.json` that `training.train` wrote next to the checkpoint (recipe, epochs, time), if there is one."""
    run_file = weights.parent / RUN_NAME
    if not run_file.is_file():
        return None
    run = json.loads(run_file.read_text())
    arguments = run.get("arguments", {})
    return {
        "negatives_per_epoch": arguments.get("negatives_per_epoch"),
        "crop_size": arguments.get("crop_size"),
        "focal_tversky_alpha": arguments.get("alpha"),
        "learning_rate": arguments.get("learning_rate"),
        "initial_weights": arguments.get("initial_weights"),
        "epochs_run": run.get("epochs_run"),
        "best_epoch": run.get("best_epoch"),
        "train_slices_per_epoch": run.get("train_slices"),
        "seconds": run.get("seconds"),
    }


def compare(args: argparse.Namespace) -> dict:
    split = load_split(Path(args.split))
    validation_patients = set(split["validation"])
    records = [record for record in find_slices(args.data_root) if record.patient_id in validation_patients]
    validation = load_slices(records)
    classifier = load_classifier(args.classifier_weights)

    # The classifier and its threshold are the same for every candidate: run it once.
    probabilities = model_outputs(classifier, validation.images).reshape(-1)
    classifier_threshold = choose_classifier_threshold(validation.labels, probabilities, args.target_sensitivity)
    given = dict(args.segmenter)
    segmenters = {name: load_segmenter(weights) for name, weights in given.items()}
    averaged = average_and_save(list(segmenters.values()), args.save_weights_average, "segmenters")
    if averaged is not None:
        segmenters["weights averaged"] = averaged
    if args.save_probability_mean:
        mean_dir = Path(args.save_probability_mean)
        segmenters["probability mean"] = save_probability_mean(
            [segmenters[name] for name in given], mean_dir, "segmenters", "tumor_segmenter"
        )
    saved_as = {"weights averaged": args.save_weights_average}
    if args.save_probability_mean:
        saved_as["probability mean"] = str(Path(args.save_probability_mean) / BEST_WEIGHTS_NAME)
    candidates = {}
    for name, segmenter in segmenters.items():
        weights = given.get(name, saved_as.get(name))
        maps = model_outputs(segmenter, validation.images)[..., 0]
        mask_threshold, _ = choose_mask_threshold(validation, probabilities, maps, classifier_threshold)
        metrics = evaluate_split(validation, probabilities, maps, classifier_threshold, mask_threshold)
        candidates[name] = {
            "weights": str(weights) if weights else None,
            "training": training_summary(given[name]) if name in given else None,
            "mask_threshold": mask_threshold,
            "segmentation": metrics["segmentation"],
            "segmenter_alone_nonempty_mask_rate_on_tumor_free_slices": metrics[
                "segmenter_alone_nonempty_mask_rate_on_tumor_free_slices"
            ],
        }
        logger.info("%s: %s", name, summary_line(candidates[name]))
    return {
        "split": "validation",
        "patients": len(validation_patients),
        "slices": int(len(validation.labels)),
        "classifier_weights": str(args.classifier_weights),
        "classifier_threshold": classifier_threshold,
        "candidates": candidates,
    }


def summary_line(candidate: dict) -> str:
    segmentation = candidate["segmentation"]
    return (
        f"volume Dice mean {segmentation['volume_dice_mean']:.3f} median {segmentation['volume_dice_median']:.3f}, "
        f"tumor-slice Dice {segmentation['tumor_slice_dice_mean']:.3f}, "
        f"masks on tumor-free slices {segmentation['nonempty_mask_rate_on_tumor_free_slices']:.3f} gated / "
        f"{candidate['segmenter_alone_nonempty_mask_rate_on_tumor_free_slices']:.3f} segmenter alone "
        f"(mask threshold {candidate['mask_threshold']})"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training.compare_segmenters",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--classifier-weights", required=True)
    parser.add_argument(
        "--segmenter",
        type=parse_candidate,
        action="append",
        required=True,
        metavar="NAME=WEIGHTS",
        help="a segmenter checkpoint to compare (repeat)",
    )
    parser.add_argument("--split", default="models/split.json")
    parser.add_argument("--target-sensitivity", type=float, default=0.95)
    parser.add_argument("--output", required=True, help="JSON file to write")
    add_combination_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> dict:
    return run_comparison(build_parser(), compare, argv)


if __name__ == "__main__":
    main()
