"""Measure sets of test-time views (the slice, its mirror, small rotations, FLAIR alone) for the classifier, out of
fold and on the validation patients.

    python -m training.compare_test_time_views --data-root ../shared/lgg/kaggle_3m_dev \
        --fold-run runs/cv/fold0 ... --fold-run runs/cv/fold4 \
        --classifier models/tumor_classifier.weights.h5 --output runs/test_time_views.json

A view set's probability is the mean of the classifier's outputs over its views. Out of fold: each fold run's
classifier (`training.cross_validation`) on the patients it never saw, pooled over the folds (the 70 training
patients). Validation: `--classifier` on the split's validation patients. The service serves at most the flip
average (`app.core.gate.flip_average`); every further view costs one more classifier run per slice, and this says
whether one would pay for itself.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import cv2
import keras
import numpy as np

from app.core.preprocessing import flair_only
from training.cross_validation import load_fold_run
from training.data import find_slices, load_slices, load_split, usage_errors
from training.models import load_classifier
from training.pipeline_choices import figures_at_target_sensitivity
from training.slice_predictions import model_outputs

logger = logging.getLogger(__name__)
TARGET_SENSITIVITY = 0.95
ROTATION_DEGREES = 8.0
VIEW_SETS = {
    "plain": ("slice",),
    "flip": ("slice", "mirror"),
    "rotations": ("slice", "rotated+", "rotated-"),
    "flip and rotations": ("slice", "mirror", "rotated+", "rotated-"),
    "flip and rotations of both": ("slice", "mirror", "rotated+", "rotated-", "mirror rotated+", "mirror rotated-"),
    "slice and FLAIR": ("slice", "flair"),
    "flip and FLAIR": ("slice", "mirror", "flair", "mirror flair"),
}


def rotated(images: np.ndarray, degrees: float) -> np.ndarray:
    """uint8 slices (N, H, W, 3) turned by `degrees` about their centre, black outside."""
    height, width = images.shape[1:3]
    transform = cv2.getRotationMatrix2D((width / 2, height / 2), degrees, 1.0)
    return np.stack([cv2.warpAffine(np.ascontiguousarray(image), transform, (width, height)) for image in images])


def view_outputs(model: keras.Model, images: np.ndarray) -> dict[str, np.ndarray]:
    """The classifier's probability per slice for every view any set uses."""
    mirror = np.ascontiguousarray(images[:, :, ::-1])
    views = {"slice": images, "mirror": mirror, "flair": flair_only(images), "mirror flair": flair_only(mirror)}
    for sign, degrees in (("+", ROTATION_DEGREES), ("-", -ROTATION_DEGREES)):
        views[f"rotated{sign}"] = rotated(images, degrees)
        views[f"mirror rotated{sign}"] = rotated(mirror, degrees)
    return {name: model_outputs(model, view).reshape(-1) for name, view in views.items()}


def set_figures(labels: np.ndarray, outputs: dict[str, np.ndarray]) -> dict[str, dict]:
    return {
        name: figures_at_target_sensitivity(
            labels, np.mean([outputs[view] for view in views], axis=0), TARGET_SENSITIVITY
        )
        for name, views in VIEW_SETS.items()
    }


def compare(args: argparse.Namespace) -> dict:
    fold_runs = [load_fold_run(run) for run in args.fold_run]
    fold_splits = [split for split, _ in fold_runs]
    split = load_split(Path(args.split))
    wanted = set(split["validation"]).union(*(fold["validation"] for fold in fold_splits))
    arrays = load_slices([record for record in find_slices(args.data_root) if record.patient_id in wanted])
    labels, outputs = [], []
    for fold, member in fold_runs:
        held_out = arrays.subset(sorted(fold["validation"]))
        labels.append(held_out.labels)
        outputs.append(view_outputs(member, held_out.images))
    pooled = {view: np.concatenate([fold_outputs[view] for fold_outputs in outputs]) for view in outputs[0]}
    validation = arrays.subset(split["validation"])
    return {
        "rotation_degrees": ROTATION_DEGREES,
        "view_sets": {name: list(views) for name, views in VIEW_SETS.items()},
        "out_of_fold": {"slices": int(sum(map(len, labels))), **set_figures(np.concatenate(labels), pooled)},
        "validation": {
            "classifier": str(args.classifier),
            "slices": int(len(validation.labels)),
            **set_figures(validation.labels, view_outputs(load_classifier(args.classifier), validation.images)),
        },
    }


def main(argv: list[str] | None = None) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--fold-run", action="append", required=True, type=Path, help="a fold's training.train run")
    parser.add_argument("--classifier", required=True, type=Path, help="weights judged on the validation patients")
    parser.add_argument("--split", default="models/split.json")
    parser.add_argument("--output", required=True, type=Path)
    args = parser.parse_args(argv)
    with usage_errors(parser.prog):
        result = compare(args)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    for part in ("out_of_fold", "validation"):
        for name in VIEW_SETS:
            figure = result[part][name]
            logger.info("%s, %s: AUC %.4f, specificity %.3f", part, name, figure["roc_auc"], figure["specificity"])
    return result


if __name__ == "__main__":
    main()
