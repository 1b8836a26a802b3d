"""Train the tumor classifier or the ResUNet segmenter on the kaggle_3m layout, split by patient.

    python -m training.train --model classifier --data-root ../shared/lgg/kaggle_3m_dev --output-dir runs/classifier
    python -m training.train --model segmenter  --data-root ../shared/lgg/kaggle_3m_dev --output-dir runs/segmenter

Writes `best.weights.h5` (the best epoch on the validation patients), `history.csv` and `run.json` to the output
directory. The split is read from `--split` if that file exists, otherwise made and saved there.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import keras

from training.data import (
    SliceArrays,
    SliceBatches,
    find_slices,
    load_slices,
    load_split,
    save_split,
    split_patients,
)
from training.losses import dice_coefficient, focal_tversky_loss, tversky_score
from training.models import build_classifier, build_resunet

logger = logging.getLogger(__name__)


class TimeBudget(keras.callbacks.Callback):
    """Stop before the next epoch would run past `minutes`: CPU training here has a wall-clock budget."""

    def __init__(self, minutes: float) -> None:
        super().__init__()
        self.seconds = minutes * 60.0
        self.started = time.monotonic()
        self.epoch_started = self.started

    def on_epoch_begin(self, epoch, logs=None) -> None:
        self.epoch_started = time.monotonic()

    def on_epoch_end(self, epoch, logs=None) -> None:
        now = time.monotonic()
        if now - self.started + (now - self.epoch_started) > self.seconds:
            logger.info("time budget of %.0f min reached after epoch %d", self.seconds / 60, epoch + 1)
            self.model.stop_training = True


def prepare_split(data_root: Path, split_path: Path, seed: int, limit_patients: int | None) -> tuple:
    """Load the slices and return (train, validation) arrays for the saved or newly made patient split."""
    records = find_slices(data_root)
    if limit_patients:
        keep = sorted({record.patient_id for record in records})[:limit_patients]
        records = [record for record in records if record.patient_id in keep]
    if split_path.exists():
        split = load_split(split_path)
    else:
        patients = [record.patient_id for record in records]
        count = len(set(patients))
        held_out = max(1, round(count * 9 / 88))
        split = split_patients(patients, validation_count=held_out, test_count=held_out, seed=seed)
        split_path.parent.mkdir(parents=True, exist_ok=True)
        save_split(split, split_path, seed=seed, source=str(data_root.name))
    wanted = set(split["train"]) | set(split["validation"])
    arrays = load_slices([record for record in records if record.patient_id in wanted])
    return arrays.subset(split["train"]), arrays.subset(split["validation"])


def compile_model(model_kind: str, learning_rate: float) -> keras.Model:
    """Build and compile the model of `model_kind` ("classifier" or "segmenter") with Adam."""
    optimizer = keras.optimizers.Adam(learning_rate=learning_rate)
    if model_kind == "classifier":
        model = build_classifier()
        model.compile(
            optimizer=optimizer,
            loss=keras.losses.BinaryCrossentropy(),
            metrics=[keras.metrics.AUC(name="auc"), keras.metrics.BinaryAccuracy(name="accuracy")],
        )
    elif model_kind == "segmenter":
        model = build_resunet()
        model.compile(optimizer=optimizer, loss=focal_tversky_loss, metrics=[tversky_score, dice_coefficient])
    else:
        raise ValueError(f"model must be 'classifier' or 'segmenter'; got {model_kind!r}")
    return model


def make_batches(
    model_kind: str, train: SliceArrays, validation: SliceArrays, batch_size: int, negatives: int | None, seed: int
) -> tuple[SliceBatches, SliceBatches]:
    target = "label" if model_kind == "classifier" else "mask"
    train_batches = SliceBatches(
        train,
        target,
        batch_size=batch_size,
        augment=True,
        shuffle=True,
        negatives_per_epoch=negatives if model_kind == "segmenter" else None,
        seed=seed,
    )
    validation_batches = SliceBatches(validation, target, batch_size=batch_size)
    return train_batches, validation_batches


def train(args: argparse.Namespace) -> dict:
    """Run one training job and return its summary (also written to `run.json`)."""
    keras.utils.set_random_seed(args.seed)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    train_arrays, validation_arrays = prepare_split(
        Path(args.data_root), Path(args.split), args.seed, args.limit_patients
    )
    train_batches, validation_batches = make_batches(
        args.model, train_arrays, validation_arrays, args.batch_size, args.negatives_per_epoch, args.seed
    )
    model = compile_model(args.model, args.learning_rate)
    if args.initial_weights:
        # Fine-tuning from an earlier run, e.g. to continue training with a lower learning rate.
        model.load_weights(args.initial_weights)
    monitor = "val_loss"
    checkpoint_path = output_dir / "best.weights.h5"
    checkpoint_cb = keras.callbacks.ModelCheckpoint(
        checkpoint_path, monitor=monitor, save_best_only=True, save_weights_only=True
    )
    early_stopping_cb = keras.callbacks.EarlyStopping(
        monitor=monitor, patience=args.patience, restore_best_weights=True
    )
    plateau_cb = keras.callbacks.ReduceLROnPlateau(monitor=monitor, factor=0.5, patience=2, min_lr=1e-5)
    history_cb = keras.callbacks.CSVLogger(str(output_dir / "history.csv"))
    callbacks = [checkpoint_cb, early_stopping_cb, plateau_cb, history_cb]
    if args.max_minutes:
        callbacks.append(TimeBudget(args.max_minutes))
    started = time.monotonic()
    history = model.fit(
        train_batches,
        validation_data=validation_batches,
        epochs=args.epochs,
        callbacks=callbacks,
        verbose=2 if args.verbose else 0,
    )
    losses = history.history[monitor]
    summary = {
        "model": args.model,
        "epochs_run": len(losses),
        "best_epoch": int(min(range(len(losses)), key=losses.__getitem__)) + 1,
        "best_val_loss": float(min(losses)),
        "train_slices": int(len(train_arrays.images)),
        "validation_slices": int(len(validation_arrays.images)),
        "seconds": round(time.monotonic() - started, 1),
        "keras_backend": keras.backend.backend(),
        "arguments": {key: value for key, value in vars(args).items()},
    }
    (output_dir / "run.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["classifier", "segmenter"], required=True)
    parser.add_argument("--data-root", required=True, help="kaggle_3m folder: one sub-folder per patient")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--split", default="models/split.json", help="patient split file (made if missing)")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--patience", type=int, default=6, help="early-stopping patience in epochs")
    parser.add_argument(
        "--negatives-per-epoch",
        type=int,
        default=300,
        help="segmenter only: tumor-free slices sampled afresh each epoch besides every tumor slice",
    )
    parser.add_argument("--initial-weights", default=None, help="start from these .weights.h5 instead of random")
    parser.add_argument("--max-minutes", type=float, default=None, help="wall-clock budget for training")
    parser.add_argument("--limit-patients", type=int, default=None, help="use only the first N patients (tests)")
    parser.add_argument("--seed", type=int, default=2019)
    parser.add_argument("--verbose", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    summary = train(build_parser().parse_args(argv))
    logger.info("finished: %s", json.dumps({k: v for k, v in summary.items() if k != "arguments"}))


if __name__ == "__main__":
    main()
