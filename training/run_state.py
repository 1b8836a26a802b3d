"""Resumable training: the state of a run written after every epoch, so a run can go on over several working days.

A run folder holds:
- `last.keras`: the model with its optimizer state (moments, iteration count, hence the learning-rate schedule);
- `state.json`: the epochs done, the best figure so far and its epoch, epochs since it improved, the hard negatives
  found so far, and the wall-clock seconds spent;
- `best.weights.h5`: the weights of the best epoch (what `training.export` takes);
- `history.csv`: one row per epoch;
- `epochs/epoch_NNN.weights.h5`: every epoch's weights, only when asked for (`keep_epoch_weights`), so the tail of
  a run can be averaged afterwards (`training.compare_classifiers --save-weights-average`).

Every random draw of the data pipeline follows from (seed, epoch) (see `SliceBatches`), and the Keras seed is set
from (seed, epoch) at the start of each epoch, so `--resume` continues exactly where the run stopped.
Files are replaced atomically: a run killed while writing keeps its previous epoch.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import keras

from app.core.durable_files import replace_atomically
from training.data import SliceBatches
from training.models import BEST_WEIGHTS_NAME

logger = logging.getLogger(__name__)

# What a training run's folder holds (its best checkpoint: `training.models.BEST_WEIGHTS_NAME`).
STATE_NAME = "state.json"
MODEL_NAME = "last.keras"
HISTORY_NAME = "history.csv"
ARGUMENTS_NAME = "arguments.json"
RUN_NAME = "run.json"
EPOCH_WEIGHTS_DIR = "epochs"


@dataclass
class RunState:
    """What a run needs, besides the model file, to go on exactly where it stopped."""

    epochs_done: int = 0
    best: float | None = None
    best_epoch: int | None = None
    epochs_since_best: int = 0
    seconds: float = 0.0
    hard_negatives: dict[str, list[int]] = field(default_factory=dict)
    stopped_early: bool = False

    @classmethod
    def read(cls, run_dir: Path) -> RunState:
        return cls(**json.loads((run_dir / STATE_NAME).read_text()))

    def write(self, run_dir: Path) -> None:
        text = json.dumps(asdict(self), indent=2) + "\n"
        replace_atomically(run_dir / STATE_NAME, lambda path: path.write_text(text))


def has_saved_state(run_dir: Path) -> bool:
    return (run_dir / STATE_NAME).is_file() and (run_dir / MODEL_NAME).is_file()


def epoch_weights_path(run_dir: Path, epoch: int) -> Path:
    """Where `keep_epoch_weights` puts the weights after `epoch` (counted from 1)."""
    return run_dir / EPOCH_WEIGHTS_DIR / f"epoch_{epoch:03d}.weights.h5"


def load_saved_model(run_dir: Path) -> keras.Model:
    """The model of the last finished epoch, compiled, with its optimizer state."""
    return keras.saving.load_model(run_dir / MODEL_NAME)


class RunCheckpoint(keras.callbacks.Callback):
    """Save the run after every epoch, keep the best epoch's weights, and stop early.

    Early stopping is done here rather than by `keras.callbacks.EarlyStopping`, whose counters restart with every
    `fit` call and would forget the best epoch of a resumed run. At the end the model holds the best weights.

    Parameters
    ----------
    run_dir
        The run folder.
    monitor, mode
        The figure in the epoch's logs that picks the best epoch, and whether "max" or "min" is better.
    patience
        Stop after this many epochs without improvement.
    total_epochs
        The planned length of the run, for the time estimate in the log line.
    batches
        The training batches: their hard negatives are saved and their epoch is moved on.
    state
        The state read from `run_dir` when resuming, or a fresh one.
    keep_epoch_weights
        Also keep every epoch's weights under `epochs/`.
    """

    def __init__(
        self,
        run_dir: Path,
        monitor: str,
        mode: str,
        patience: int,
        total_epochs: int,
        batches: SliceBatches,
        state: RunState,
        keep_epoch_weights: bool = False,
    ) -> None:
        super().__init__()
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min'; got {mode!r}")
        self.run_dir = run_dir
        self.monitor = monitor
        self.mode = mode
        self.patience = patience
        self.total_epochs = total_epochs
        self.batches = batches
        self.state = state
        self.keep_epoch_weights = keep_epoch_weights
        self.epoch_started = self.last_batch_ended = time.monotonic()
        # This invocation's epochs alone time the estimate of what is left: a run begun on a GPU machine and
        # resumed here goes on at this machine's pace.
        self.epochs_here, self.seconds_here = 0, 0.0

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.epoch_started = self.last_batch_ended = time.monotonic()
        # The epoch's sample of slices, with the hard negatives found so far (also right after a resume).
        self.batches.set_epoch(epoch)
        # Dropout and other layer randomness, keyed to the epoch like the data.
        keras.utils.set_random_seed((self.batches.seed * 100_003 + epoch) % 2**31)

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self.last_batch_ended = time.monotonic()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = dict(logs or {})
        seconds = time.monotonic() - self.epoch_started
        # Throughput of the training steps alone (data pipeline included), not of the validation after them.
        training_seconds = max(self.last_batch_ended - self.epoch_started, 1e-9)
        samples = len(self.batches.indices)
        logs.update({"epoch_seconds": seconds, "train_slices_per_second": samples / training_seconds})
        value = logs.get(self.monitor)
        if value is None or not math.isfinite(value):
            raise ValueError(f"monitor {self.monitor!r} missing or not finite in the epoch logs: {sorted(logs)}")
        state = self.state
        improved = state.best is None or (value > state.best if self.mode == "max" else value < state.best)
        if improved:
            state.best, state.best_epoch, state.epochs_since_best = float(value), epoch + 1, 0
            replace_atomically(self.run_dir / BEST_WEIGHTS_NAME, self.model.save_weights)
        else:
            state.epochs_since_best += 1
        state.epochs_done = epoch + 1
        state.seconds += seconds
        self.epochs_here, self.seconds_here = self.epochs_here + 1, self.seconds_here + seconds
        state.hard_negatives = {str(index): list(spot) for index, spot in self.batches.hard_negatives.items()}
        if state.epochs_since_best >= self.patience:
            state.stopped_early = True
            self.model.stop_training = True
        append_history(self.run_dir / HISTORY_NAME, epoch, logs)
        if self.keep_epoch_weights:
            (self.run_dir / EPOCH_WEIGHTS_DIR).mkdir(exist_ok=True)
            replace_atomically(epoch_weights_path(self.run_dir, epoch + 1), self.model.save_weights)
        replace_atomically(self.run_dir / MODEL_NAME, self.model.save)
        state.write(self.run_dir)
        left = (self.total_epochs - state.epochs_done) * self.seconds_here / self.epochs_here
        logger.info(
            "epoch %d/%d %.0f s (%.1f slices/s), elapsed %.1f min, about %.0f min left; %s %.4f (best %.4f at %d)%s",
            epoch + 1,
            self.total_epochs,
            seconds,
            logs["train_slices_per_second"],
            state.seconds / 60,
            0 if state.stopped_early else left / 60,
            self.monitor,
            value,
            state.best,
            state.best_epoch,
            "; stopping early" if state.stopped_early else "",
        )

    def on_train_end(self, logs: dict | None = None) -> None:
        if (self.run_dir / BEST_WEIGHTS_NAME).is_file():
            self.model.load_weights(self.run_dir / BEST_WEIGHTS_NAME)


def append_history(path: Path, epoch: int, logs: dict) -> None:
    """Add one epoch's figures to the CSV, adding columns when a later epoch brings new ones."""
    rows = list(csv.DictReader(path.open())) if path.is_file() else []
    rows = [row for row in rows if int(row["epoch"]) < epoch]
    rows.append({"epoch": epoch, **{key: float(value) for key, value in logs.items()}})
    columns = ["epoch", *sorted({key for row in rows for key in row} - {"epoch"})]

    def write(temporary: Path) -> None:
        with temporary.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)

    replace_atomically(path, write)
