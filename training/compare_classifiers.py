"""Compare classifier checkpoints, and simple ways of combining them, on the validation patients.

    python -m training.compare_classifiers --data-root ../shared/lgg/kaggle_3m_dev \
        --classifier committed=models/tumor_classifier.weights.h5 \
        --classifier fine-tune=runs/cla_ft/best.weights.h5 --output runs/classifier_comparison.json

The figure that matters for the service is the specificity at the highest threshold that keeps sensitivity at or
above `--target-sensitivity` (as `training.evaluate` chooses the deployed threshold), with the ROC AUC beside it.
Besides each checkpoint alone it measures: the checkpoint with a horizontal-flip test-time average, the mean of the
candidates' probabilities (an ensemble), the mean of their flip averages (the ensemble as the service would run
it), the candidates' weights averaged into one model (only when all share one architecture), and, with
`--recalibrate-batch-norm`, each checkpoint with its batch-norm statistics re-estimated on the un-augmented
training slices. A checkpoint is loaded with the architecture its run saved beside it, if any (`load_classifier`:
the encoder backbone, the cross-validation folds averaged). Only validation patients are judged, so the choice
never looks at the test patients.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Iterator
from pathlib import Path

import keras
import numpy as np

from training.checkpoint_comparison import (
    add_combination_arguments,
    average_and_save,
    parse_candidate,
    run_comparison,
    save_probability_mean,
)
from training.data import find_slices, load_slices, load_split
from training.models import load_classifier
from training.pipeline_choices import figures_at_target_sensitivity
from training.slice_predictions import classifier_probabilities, model_outputs, preprocessed_batches

logger = logging.getLogger(__name__)


def batch_norm_layers(model: keras.Model) -> Iterator[keras.layers.BatchNormalization]:
    """The model's batch-norm layers, those of nested models (an averaged classifier's members) included."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from batch_norm_layers(layer)
        elif isinstance(layer, keras.layers.BatchNormalization):
            yield layer


def recalibrate_batch_norm(model: keras.Model, images: np.ndarray) -> None:
    """Replace the batch-norm moving statistics by their average over `images` (uint8 slices, no augmentation)."""
    layers = list(batch_norm_layers(model))
    for step, batch in enumerate(preprocessed_batches(images, 32)):
        for layer in layers:
            layer.momentum = step / (step + 1.0)  # a running mean over the batches seen so far
        model(batch, training=True)
    for layer in layers:
        layer.momentum = 0.99


def compare(args: argparse.Namespace) -> dict:
    split = load_split(Path(args.split))
    wanted = set(split["validation"]) | (set(split["train"]) if args.recalibrate_batch_norm else set())
    arrays = load_slices([record for record in find_slices(args.data_root) if record.patient_id in wanted])
    validation = arrays.subset(split["validation"])
    models, probabilities, flip_probabilities, results = {}, {}, {}, {}
    for name, weights in args.classifier:
        model = load_classifier(weights)
        models[name] = model
        probabilities[name] = model_outputs(model, validation.images).reshape(-1)
        results[name] = figures_at_target_sensitivity(validation.labels, probabilities[name], args.target_sensitivity)
        flip_probabilities[name] = classifier_probabilities(model, validation.images, flip_average=True)
        results[f"{name} + flip average"] = figures_at_target_sensitivity(
            validation.labels, flip_probabilities[name], args.target_sensitivity
        )
    if len(models) > 1:
        ensemble = np.mean(list(probabilities.values()), axis=0)
        results["mean of all"] = figures_at_target_sensitivity(validation.labels, ensemble, args.target_sensitivity)
        served_ensemble = np.mean(list(flip_probabilities.values()), axis=0)  # how the service would run them
        results["mean of all + flip average"] = figures_at_target_sensitivity(
            validation.labels, served_ensemble, args.target_sensitivity
        )
    if args.save_probability_mean:
        save_probability_mean(
            list(models.values()), Path(args.save_probability_mean), "classifiers", "tumor_classifier"
        )
    averaged = average_and_save(list(models.values()), args.save_weights_average, "classifiers")
    if averaged is not None:
        results["weights averaged"] = figures_at_target_sensitivity(
            validation.labels, model_outputs(averaged, validation.images).reshape(-1), args.target_sensitivity
        )
    if args.recalibrate_batch_norm:
        training_images = arrays.subset(split["train"]).images
        for name, model in models.items():
            recalibrate_batch_norm(model, training_images)
            outputs = model_outputs(model, validation.images).reshape(-1)
            results[f"{name}, batch norm re-estimated"] = figures_at_target_sensitivity(
                validation.labels, outputs, args.target_sensitivity
            )
    for name, result in results.items():
        logger.info("%s: AUC %.4f, specificity %.3f", name, result["roc_auc"], result["specificity"])
    return {
        "split": "validation",
        "patients": len(split["validation"]),
        "slices": int(len(validation.labels)),
        "target_sensitivity": args.target_sensitivity,
        "classifiers": {name: str(weights) for name, weights in args.classifier},
        "results": results,
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training.compare_classifiers",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--data-root", required=True)
    parser.add_argument(
        "--classifier",
        type=parse_candidate,
        action="append",
        required=True,
        metavar="NAME=WEIGHTS",
        help="a classifier checkpoint to compare (repeat)",
    )
    parser.add_argument("--split", default="models/split.json")
    parser.add_argument("--target-sensitivity", type=float, default=0.95)
    parser.add_argument("--recalibrate-batch-norm", action="store_true")
    parser.add_argument("--output", required=True, help="JSON file to write")
    add_combination_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> dict:
    return run_comparison(build_parser(), compare, argv)


if __name__ == "__main__":
    main()
