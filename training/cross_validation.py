"""Cross-validate the classifier over the training patients and make the fold models one served classifier (an
ensemble: the mean of their probabilities).

    python -m training.cross_validation folds --split models/split.json --folds 5 --output-dir runs/cv
    python -m training.train --model classifier --data-root ../shared/lgg/kaggle_3m_dev \
        --split runs/cv/split_fold0.json --output-dir runs/cv/fold0 ...        # once per fold
    python -m training.cross_validation combine --data-root ../shared/lgg/kaggle_3m_dev \
        --run runs/cv/fold0 ... --run runs/cv/fold4 --output-dir runs/cv/ensemble

Why: nine validation patients are too few to place the classifier threshold. The threshold keeps sensitivity at
95 %, so it sits on the 5th lowest-scoring percent of tumor slices: on 9 patients a handful of slices, and the
threshold moves with each of them. `folds` deals the training patients into k folds (each institution spread over
all folds); a classifier is trained per fold with that fold's patients as its validation set. `combine` then
predicts each fold's patients with the one model that never saw them (out-of-fold predictions: every training
patient judged as an unseen one), and writes the fold models as one Keras model whose output is the mean of their
probabilities (`architecture.json` + `best.weights.h5`, loaded by `training.models.load_classifier` like any
checkpoint). `training.evaluate
--threshold-slices runs/cv/ensemble/out_of_fold.npz` chooses the threshold on those slices together with the
validation patients'. The validation and test patients of the split are in no fold, so both stay unseen.
Each fold is also measured with the flip average the service can apply (`app.core.gate.flip_average`): a test of
that choice on 70 unseen patients rather than 9, saved beside the plain probabilities.

`refit-folds` serves a classifier refit with the validation patients among its training patients (more patients
being the lever that was left): it deals the validation patients into folds, each trained on everything but its
fold; `combine --weights` over those runs judges each validation patient by a model of the refit's recipe that never
saw it, and `training.evaluate --validation-out-of-fold` makes every validation choice on those predictions.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np

from training.data import (
    DatasetError,
    find_slices,
    load_slices,
    load_split,
    save_split,
    shuffled_by_institution,
    usage_errors,
)
from training.models import BEST_WEIGHTS_NAME, load_classifier, probability_mean_of, renamed, save_checkpoint
from training.pipeline_choices import figures_at_target_sensitivity
from training.run_state import ARGUMENTS_NAME
from training.slice_predictions import classifier_probabilities, model_outputs

logger = logging.getLogger(__name__)
OUT_OF_FOLD_NAME = "out_of_fold.npz"
TARGET_SENSITIVITY = 0.95  # the operating point whose threshold and specificity the summary reports


def make_folds(patients: Sequence[str], folds: int, seed: int) -> list[list[str]]:
    """Deal `patients` into `folds` folds: each institution's patients shuffled (by `seed`), then dealt in turn,
    so every fold gets a share of each scanner site. The same ids and seed always give the same folds."""
    if not 2 <= folds <= len(patients):
        raise DatasetError(f"cannot make {folds} folds of {len(patients)} patients")
    order = [patient for members in shuffled_by_institution(patients, seed).values() for patient in members]
    return [sorted(order[fold::folds]) for fold in range(folds)]


def write_fold_splits(split_path: Path, folds: int, seed: int, output_dir: Path) -> list[Path]:
    """One split file per fold: that fold's patients as validation, the other folds as training, the split's own
    validation and test patients in neither (kept as `test` so nothing downstream mistakes them for training)."""
    split = load_split(split_path)
    output_dir.mkdir(parents=True, exist_ok=True)
    held_out = sorted(set(split["validation"]) | set(split["test"]))
    paths = []
    for index, fold in enumerate(make_folds(split["train"], folds, seed)):
        fold_split = {"train": [p for p in split["train"] if p not in fold], "validation": fold, "test": held_out}
        path = output_dir / f"split_fold{index}.json"
        save_split(fold_split, path, seed=seed, source=f"{split_path.name}, fold {index} of {folds}")
        paths.append(path)
    return paths


def write_refit_splits(split_path: Path, folds: int, seed: int, output_dir: Path) -> list[Path]:
    """Splits for refitting the classifier with the validation patients among its training patients.

    One split per fold of the validation patients (that fold held out as validation, the training patients and the
    other folds trained on): `combine` over these runs gives every validation patient a prediction by a model that
    never saw it, which then stands in for the refit model's own in every choice made on validation
    (`training.evaluate --validation-out-of-fold`). Plus `split_refit_all.json`, which trains on every training and
    validation patient; its validation patients are among them, so its per-epoch figures are of patients it learns
    from (run it for a fixed number of epochs and take its last). The test patients stay in `test` throughout.
    """
    split = load_split(split_path)
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, fold in enumerate(make_folds(split["validation"], folds, seed)):
        trained = sorted(set(split["train"]) | (set(split["validation"]) - set(fold)))
        fold_split = {"train": trained, "validation": fold, "test": split["test"]}
        path = output_dir / f"split_refit_fold{index}.json"
        save_split(fold_split, path, seed=seed, source=f"{split_path.name}, validation fold {index} of {folds}")
        paths.append(path)
    everyone = {"train": sorted(split["train"] + split["validation"]), "validation": split["validation"]}
    path = output_dir / "split_refit_all.json"
    save_split({**everyone, "test": split["test"]}, path, seed=seed, source=f"{split_path.name}, refit on all")
    return [*paths, path]


def load_fold_run(run: Path, weights: Path | None = None) -> tuple[dict[str, list[str]], keras.Model]:
    """A fold run's split (the one it was trained with) and its best classifier, or the classifier in `weights`
    (e.g. its last epoch averaged with where it started), in the architecture the run saved and checked to fit it
    (`load_classifier`)."""
    arguments = json.loads((run / ARGUMENTS_NAME).read_text())
    return load_split(Path(arguments["split"])), load_classifier(weights or run / BEST_WEIGHTS_NAME)


def combine(data_root: str, runs: Sequence[Path], output_dir: Path, weights: Sequence[Path] | None = None) -> dict:
    """Out-of-fold predictions of the fold runs (by their best epochs, or by `weights`, one per run), and the mean of
    their probabilities as one model; return the summary written."""
    if weights and len(weights) != len(runs):
        raise DatasetError(f"--weights must be given once per --run: {len(weights)} for {len(runs)} runs")
    chosen = weights or [None] * len(runs)
    fold_runs = [load_fold_run(run, fold_weights) for run, fold_weights in zip(runs, chosen, strict=True)]
    splits, classifiers = zip(*fold_runs, strict=True)
    fold_patients = [set(split["validation"]) for split in splits]
    everyone = set().union(*fold_patients)
    if sum(len(patients) for patients in fold_patients) != len(everyone):
        raise DatasetError("the runs' validation patients overlap: they are not folds of one split")
    arrays = load_slices([record for record in find_slices(data_root) if record.patient_id in everyone])
    members, probabilities, flipped, labels, patient_ids, slice_numbers, per_fold = [], [], [], [], [], [], []
    for index, (run, patients, classifier) in enumerate(zip(runs, fold_patients, classifiers, strict=True)):
        member = renamed(classifier, f"fold{index}")  # members of one ensemble need distinct names
        members.append(member)
        held_out = arrays.subset(sorted(patients))
        fold_probabilities = model_outputs(member, held_out.images).reshape(-1)
        fold_flipped = classifier_probabilities(member, held_out.images, flip_average=True)
        probabilities.append(fold_probabilities)
        flipped.append(fold_flipped)
        labels.append(held_out.labels)
        patient_ids.append(held_out.patient_ids)
        slice_numbers.append(held_out.slice_numbers)
        fold_figures = figures_at_target_sensitivity(held_out.labels, fold_probabilities, TARGET_SENSITIVITY)
        flip_figures = figures_at_target_sensitivity(held_out.labels, fold_flipped, TARGET_SENSITIVITY)
        per_fold.append(
            {
                "run": str(run),
                "patients": len(patients),
                "slices": len(held_out.labels),
                **fold_figures,
                "flip_average": flip_figures,
            }
        )
    probabilities, flipped, labels, patient_ids, slice_numbers = (
        np.concatenate(part) for part in (probabilities, flipped, labels, patient_ids, slice_numbers)
    )
    output_dir.mkdir(parents=True, exist_ok=True)
    np.savez(
        output_dir / OUT_OF_FOLD_NAME,
        probabilities=probabilities,
        flip_average_probabilities=flipped,
        labels=labels,
        patient_ids=patient_ids,
        slice_numbers=slice_numbers,
    )
    save_checkpoint(probability_mean_of(members), output_dir)
    pooled = {
        "patients": len(everyone),
        "slices": len(labels),
        **figures_at_target_sensitivity(labels, probabilities, TARGET_SENSITIVITY),
    }
    pooled["flip_average"] = figures_at_target_sensitivity(labels, flipped, TARGET_SENSITIVITY)
    summary = {"folds": per_fold, "out_of_fold": pooled}
    (output_dir / "out_of_fold.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    folds = commands.add_parser("folds", help="write one split file per fold of the training patients")
    folds.add_argument("--split", default="models/split.json")
    folds.add_argument("--folds", type=int, default=5)
    folds.add_argument("--seed", type=int, default=2026)
    folds.add_argument("--output-dir", required=True)
    refit = commands.add_parser(
        "refit-folds", help="split files to refit on the training and validation patients, with folds of the latter"
    )
    refit.add_argument("--split", default="models/split.json")
    refit.add_argument("--folds", type=int, default=3)
    refit.add_argument("--seed", type=int, default=2026)
    refit.add_argument("--output-dir", required=True)
    collect = commands.add_parser("combine", help="out-of-fold predictions and the averaged model of the fold runs")
    collect.add_argument("--data-root", required=True)
    collect.add_argument("--run", action="append", required=True, help="a fold's training.train run folder")
    collect.add_argument(
        "--weights",
        action="append",
        type=Path,
        help="judge the fold by these weights instead of its best epoch (once per --run, in the same order)",
    )
    collect.add_argument("--output-dir", required=True)
    args = parser.parse_args(argv)
    with usage_errors(parser.prog):
        if args.command in ("folds", "refit-folds"):
            write = write_fold_splits if args.command == "folds" else write_refit_splits
            for path in write(Path(args.split), args.folds, args.seed, Path(args.output_dir)):
                logger.info("wrote %s", path)
        else:
            runs = [Path(run) for run in args.run]
            summary = combine(args.data_root, runs, Path(args.output_dir), args.weights)
            logger.info("out of fold: %s", json.dumps(summary["out_of_fold"]))


if __name__ == "__main__":
    main()
