"""Export trained models as architecture JSON + `.weights.h5` and write `manifest.json` with hashes and metrics.

    python -m training.export --classifier-weights runs/classifier/best.weights.h5 \
        --segmenter-weights runs/segmenter/best.weights.h5 --evaluation runs/evaluation/evaluation.json \
        --output-dir runs/export --version 2.0.0

Export into a folder of its own and copy it over `models/` only to replace the served models: `--output-dir models`
overwrites them (model card included), and `--version` defaults to 1.0.0.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
from pathlib import Path

import keras

from app.core.model_store import MANIFEST_FORMAT_VERSION, Manifest, ModelEntry, sha256_of, write_manifest
from app.core.preprocessing import PREPROCESSING_ID
from training.data import load_split, usage_errors
from training.model_card import MODEL_CARD_NAME, MODEL_HISTORY_NAME, render_model_card
from training.models import load_classifier, load_segmenter
from training.run_state import ARGUMENTS_NAME, HISTORY_NAME, RUN_NAME, STATE_NAME

TRAINING_DATA = (
    "LGG MRI Segmentation (Buda et al. 2019; TCGA-LGG via TCIA), kaggle_3m layout: development pool of 88 "
    "patients, split by patient (see split file)"
)


def export_model(model: keras.Model, output_dir: Path) -> tuple[str, str]:
    """Write `<name>.json` (uncompiled architecture) and `<name>.weights.h5`; return the two file names."""
    architecture_name = f"{model.name}.json"
    weights_name = f"{model.name}.weights.h5"
    # to_json of the functional graph alone: no optimizer, no loss, so loading needs no custom objects.
    (output_dir / architecture_name).write_text(model.to_json(indent=1) + "\n")
    model.save_weights(output_dir / weights_name)
    return architecture_name, weights_name


def backend_versions() -> dict[str, str]:
    versions = {"keras": keras.__version__, "backend": keras.backend.backend(), "python": platform.python_version()}
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf  # only at the edge: the versions of the framework that wrote the weights

        versions["tensorflow"] = tf.__version__
    return versions


def export_models(
    output_dir: Path,
    classifier: keras.Model,
    segmenter: keras.Model,
    classifier_threshold: float,
    mask_threshold: float,
    split_file: str,
    metrics: dict,
    version: str,
    series_min_component_voxels: int = 0,
    classifier_flip_average: bool = False,
    single_slice_mask_min_probability: float = 0.0,
    single_slice_min_component_pixels: int = 0,
) -> dict:
    """Export both models into `output_dir` and write the manifest that the service reads; return it as a dict."""
    output_dir.mkdir(parents=True, exist_ok=True)
    entries = {}
    for role, model, threshold in (
        ("classifier", classifier, classifier_threshold),
        ("segmenter", segmenter, mask_threshold),
    ):
        architecture, weights = export_model(model, output_dir)
        entries[role] = ModelEntry(
            name=model.name,
            version=version,
            architecture=architecture,
            weights=weights,
            parameters=int(model.count_params()),
            threshold=float(threshold),
        )
    entries["classifier"].flip_average = bool(classifier_flip_average)
    entries["segmenter"].series_min_component_voxels = int(series_min_component_voxels)
    entries["segmenter"].single_slice_mask_min_probability = float(single_slice_mask_min_probability)
    entries["segmenter"].single_slice_min_component_pixels = int(single_slice_min_component_pixels)
    hashed = [name for entry in entries.values() for name in (entry.architecture, entry.weights)] + [split_file]
    manifest = Manifest(
        format_version=MANIFEST_FORMAT_VERSION,
        preprocessing=PREPROCESSING_ID,
        input_shape=list(classifier.input_shape[1:]),
        classifier=entries["classifier"],
        segmenter=entries["segmenter"],
        split=split_file,
        training_data=TRAINING_DATA,
        metrics=metrics,
        versions=backend_versions(),
        files={name: sha256_of(output_dir / name) for name in hashed},
    )
    write_manifest(output_dir, manifest)
    return manifest.model_dump()


def training_run_summary(run_dir: Path) -> dict:
    """`run.json` of a training run, with its name and the median training throughput over its epochs."""
    import csv
    import statistics

    if (run_dir / RUN_NAME).is_file():
        run = json.loads((run_dir / RUN_NAME).read_text())
    else:  # a run still going (or stopped between sessions): its saved state says as much
        state = json.loads((run_dir / STATE_NAME).read_text())
        arguments = json.loads((run_dir / ARGUMENTS_NAME).read_text())
        run = {
            "model": arguments["model"],
            "epochs_run": state["epochs_done"],
            "best_epoch": state["best_epoch"],
            "monitor": arguments.get("monitor")
            or ("val_volume_dice" if arguments["model"] == "segmenter" else "val_specificity"),
            "seconds": state["seconds"],
            "arguments": arguments,
        }
    with (run_dir / HISTORY_NAME).open() as handle:
        rates = [float(row["train_slices_per_second"]) for row in csv.DictReader(handle)]
    return {**run, "name": run_dir.name, "slices_per_second": statistics.median(rates)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training.export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--classifier-weights", required=True)
    parser.add_argument("--segmenter-weights", required=True)
    parser.add_argument(
        "--evaluation", required=True, help="evaluation.json from training.evaluate (in its --output-dir)"
    )
    parser.add_argument("--split", default="models/split.json")
    parser.add_argument(
        "--output-dir", default="models", help="where to write; the default, models, replaces the served models"
    )
    parser.add_argument("--version", default="1.0.0", help="the models' version in the manifest and the card")
    parser.add_argument(
        "--evaluation-command", default="(not recorded)", help="the command that produced --evaluation (model card)"
    )
    parser.add_argument(
        "--training-command", action="append", default=[], help="a command that trained a model (model card)"
    )
    parser.add_argument("--note", action="append", default=[], help="a line for the model card's limitations")
    parser.add_argument(
        "--training-run", action="append", default=[], help="a run folder of training.train (model card's table)"
    )
    parser.add_argument("--comparison", default=None, help="JSON of training.compare_segmenters (model card)")
    return parser


def export_run(args: argparse.Namespace) -> None:
    """Write the models, their manifest and model card, and the split into `--output-dir`. Every input is read
    first: a missing one stops the export before anything is written (a manifest without its model card was left
    behind otherwise)."""
    evaluation = json.loads(Path(args.evaluation).read_text())
    classifier = load_classifier(args.classifier_weights)
    segmenter = load_segmenter(args.segmenter_weights)
    split_path = Path(args.split)
    training_patients = load_split(split_path)["train"]
    training_runs = [training_run_summary(Path(run)) for run in args.training_run]
    comparison = json.loads(Path(args.comparison).read_text()) if args.comparison else None
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if split_path.resolve() != (output_dir / split_path.name).resolve():
        shutil.copyfile(split_path, output_dir / split_path.name)
    manifest = export_models(
        output_dir,
        classifier,
        segmenter,
        classifier_threshold=evaluation["thresholds"]["classifier"],
        mask_threshold=evaluation["thresholds"]["mask"],
        split_file=split_path.name,
        metrics=evaluation["metrics"],
        version=args.version,
        # Evaluations made before the series clean-up existed have no such choice: the clean-up stays off.
        series_min_component_voxels=evaluation.get("series_min_component_voxels", 0),
        classifier_flip_average=evaluation.get("classifier_flip_average", False),
        single_slice_mask_min_probability=evaluation.get("single_slice_mask_min_probability", 0.0),
        single_slice_min_component_pixels=evaluation.get("single_slice_min_component_pixels", 0),
    )
    card = render_model_card(
        manifest,
        args.evaluation_command,
        args.training_command or ["(not recorded)"],
        args.note,
        training_runs=training_runs,
        comparison=comparison,
        classifier_members=max(1, sum(isinstance(layer, keras.Model) for layer in classifier.layers)),
        threshold_chosen_on=evaluation.get("classifier_threshold_chosen_on"),
        has_history=(output_dir / MODEL_HISTORY_NAME).exists(),
        training_patients=training_patients,
        validation=evaluation.get("validation"),
    )
    (output_dir / MODEL_CARD_NAME).write_text(card)


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    with usage_errors(parser.prog):  # a file that is not there: one line and exit 2, not a traceback
        export_run(args)


if __name__ == "__main__":
    main()
