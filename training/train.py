"""Train the tumor classifier or the ResUNet segmenter on the kaggle_3m layout, split by patient.

    python -m training.train --model segmenter --data-root ../shared/lgg/kaggle_3m_dev --output-dir runs/segmenter \
        --reference-model-dir models
    python -m training.train --resume runs/segmenter          # go on after an interruption, days later if need be

The segmenter trains on tumor-centred crops (`--crop-size`, default 128) and still serves whole slices; the
classifier on whole slices. After every epoch the served pipeline (classifier gate, then segmenter) runs on the
validation patients with the other model taken from `--reference-model-dir`, and its figures pick the best epoch
(`--monitor`): per-patient volume Dice for the segmenter, specificity at `--target-sensitivity` for the classifier.
The learning rate follows a cosine decay over `--epochs`; training stops early after `--patience` epochs without
a better figure.

The run folder gets `best.weights.h5` (the best epoch), `last.keras` and `state.json` (to resume), `history.csv`
(a row per epoch, with `train_slices_per_second`), `arguments.json` and, at the end, `run.json`. The split is read
from `--split` if that file exists, otherwise made and saved there.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np

from app.core.model_store import load_model, read_manifest
from training.augmentation import AUGMENTATIONS
from training.classifier_variants import (
    build_efficientnet_lite0_classifier,
    build_encoder_classifier,
    build_flair_classifier,
    build_mirror_classifier,
    build_standardized_classifier,
    build_tumor_map_classifier,
    fine_stem_classifier_from,
    flair_classifier_from,
    mirror_classifier_from,
    served_from_tumor_map,
    tumor_map_classifier_from,
)
from training.data import (
    SliceArrays,
    SliceBatches,
    find_slices,
    load_slices,
    load_split,
    save_split,
    split_patients,
    usage_errors,
)
from training.losses import FocalTverskyLoss, dice_coefficient, tumor_map_loss, tversky_score
from training.models import (
    ARCHITECTURE_NAME,
    architecture_json,
    build_classifier,
    build_resunet,
    load_segmenter,
    transfer_weights,
)
from training.run_state import (
    ARGUMENTS_NAME,
    RUN_NAME,
    RunCheckpoint,
    RunState,
    has_saved_state,
    load_saved_model,
)
from training.slice_predictions import model_outputs
from training.validation import HardNegativeMiner, ServedPipelineValidation

logger = logging.getLogger(__name__)
HELD_OUT_SHARE = 9 / 88
"""Patients held out for validation and again for test, each: 9 of the 88 of the development data."""
FINAL_LEARNING_RATE_FRACTION = 0.02
"""Where the cosine decay ends, as a fraction of the starting learning rate."""
DEFAULT_MONITOR = {"classifier": "val_specificity", "segmenter": "val_volume_dice"}
CLASSIFIER_BACKBONES = {
    "cnn": build_classifier,
    "cnn-mirror": build_mirror_classifier,
    "cnn-flair": build_flair_classifier,
    "cnn-standardized": build_standardized_classifier,
    "cnn-fine-stem": functools.partial(build_classifier, stem_pooling=False),
    "segmenter-encoder": build_encoder_classifier,
    "efficientnet-lite0": build_efficientnet_lite0_classifier,
    "cnn-tumor-map": build_tumor_map_classifier,
}
# Backbones that learn from the masks (a map of tumor regions) rather than from one label per slice.
MASK_TRAINED_BACKBONES = {"cnn-tumor-map"}


def start_from(
    weights: str, build: Callable[[], keras.Model], from_plain: Callable[[keras.Model], keras.Model]
) -> keras.Model:
    """The classifier of `build` a run starts from: its own checkpoint as it is, or a plain classifier's weights
    carried over by `from_plain`."""
    model = build()
    try:
        with warnings.catch_warnings():  # Keras warns about each layer the other architecture's file has or lacks
            warnings.simplefilter("ignore", UserWarning)
            model.load_weights(weights)
    except ValueError:
        plain = build_classifier()
        plain.load_weights(weights)
        return from_plain(plain)
    return model


def mirror_start(weights: str) -> keras.Model:
    """A mirror checkpoint, or a plain classifier carried over unchanged (`mirror_classifier_from`)."""
    return start_from(weights, build_mirror_classifier, mirror_classifier_from)


def flair_start(weights: str) -> keras.Model:
    """A FLAIR checkpoint, or a plain classifier's weights behind the FLAIR selector (`flair_classifier_from`)."""
    return start_from(weights, build_flair_classifier, flair_classifier_from)


def fine_stem_start(weights: str) -> keras.Model:
    """A fine-stem checkpoint, or a plain classifier's weights (the two share every weight)."""
    return start_from(weights, CLASSIFIER_BACKBONES["cnn-fine-stem"], fine_stem_classifier_from)


class TimeBudget(keras.callbacks.Callback):
    """Stop before the next epoch would run past `minutes` since `started` (the invocation's start, so loading the
    data and the first validation count too): a CPU session or a device call has a wall-clock limit."""

    def __init__(self, minutes: float, started: float) -> None:
        super().__init__()
        self.seconds = minutes * 60.0
        self.started = started
        self.epoch_started = time.monotonic()

    def on_epoch_begin(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        self.epoch_started = time.monotonic()

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
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
        held_out = max(1, round(count * HELD_OUT_SHARE))
        split = split_patients(patients, validation_count=held_out, test_count=held_out, seed=seed)
        split_path.parent.mkdir(parents=True, exist_ok=True)
        save_split(split, split_path, seed=seed, source=str(data_root.name))
    wanted = set(split["train"]) | set(split["validation"])
    arrays = load_slices([record for record in records if record.patient_id in wanted])
    return arrays.subset(split["train"]), arrays.subset(split["validation"])


def compile_model(
    model_kind: str,
    learning_rate: float,
    decay_steps: int,
    alpha: float,
    jit_compile: bool | None = None,
    full_resolution_output: bool = False,
    classifier_backbone: str = "cnn",
    label_smoothing: float = 0.0,
    focal_gamma: float = 0.0,
    weight_decay: float = 0.0,
) -> keras.Model:
    """Build and compile the model of `model_kind` ("classifier" or "segmenter") with Adam and a cosine decay.

    `weight_decay` above 0 makes it AdamW: every step shrinks each weight by learning rate x weight_decay of itself,
    apart from the gradient (decoupled weight decay, Loshchilov & Hutter 2019).

    The segmenter is built with free height and width so it trains on crops and serves whole slices with the same
    weights; the exported model has the fixed 256 x 256 input.
    """
    if jit_compile is None:
        # XLA makes the training step about 20 % faster on CPU, but with its depthwise convolutions EfficientNet
        # did not finish one epoch of 2,670 slices in 17 min on 2 cores; without XLA it trains at 13 slices/s.
        jit_compile = not (model_kind == "classifier" and classifier_backbone == "efficientnet-lite0")
    schedule = keras.optimizers.schedules.CosineDecay(
        learning_rate, decay_steps=max(1, decay_steps), alpha=FINAL_LEARNING_RATE_FRACTION
    )
    if weight_decay > 0:
        optimizer = keras.optimizers.AdamW(learning_rate=schedule, weight_decay=weight_decay)
    else:
        optimizer = keras.optimizers.Adam(learning_rate=schedule)
    if model_kind == "classifier" and classifier_backbone in MASK_TRAINED_BACKBONES:
        model = CLASSIFIER_BACKBONES[classifier_backbone]()
        model.compile(optimizer=optimizer, loss=tumor_map_loss, jit_compile=jit_compile)
    elif model_kind == "classifier":
        model = CLASSIFIER_BACKBONES[classifier_backbone]()
        if focal_gamma > 0:
            # Focal loss: slices the classifier already gets right weigh (1 - p_right)^gamma, so the hard ones
            # (a tumor's first and last slices) drive training.
            loss = keras.losses.BinaryFocalCrossentropy(gamma=focal_gamma, label_smoothing=label_smoothing)
        else:
            loss = keras.losses.BinaryCrossentropy(label_smoothing=label_smoothing)
        model.compile(
            optimizer=optimizer,
            loss=loss,
            metrics=[keras.metrics.AUC(name="auc"), keras.metrics.BinaryAccuracy(name="accuracy")],
            jit_compile=jit_compile,
        )
    elif model_kind == "segmenter":
        model = build_resunet(input_shape=(None, None, 3), full_resolution_output=full_resolution_output)
        model.compile(
            optimizer=optimizer,
            loss=FocalTverskyLoss(alpha=alpha),
            metrics=[tversky_score, dice_coefficient],
            jit_compile=jit_compile,
        )
    else:
        raise ValueError(f"model must be 'classifier' or 'segmenter'; got {model_kind!r}")
    return model


def make_train_batches(args: argparse.Namespace, train: SliceArrays) -> SliceBatches:
    segmenter = args.model == "segmenter"
    on_masks = segmenter or args.classifier_backbone in MASK_TRAINED_BACKBONES
    return SliceBatches(
        train,
        "mask" if on_masks else "label",
        batch_size=args.batch_size,
        augment=True,
        augmentation=AUGMENTATIONS[args.augmentation],
        shuffle=True,
        negatives_per_epoch=args.negatives_per_epoch if segmenter else None,
        near_tumor_weight=1.0 if on_masks else args.near_tumor_negative_weight,
        near_tumor_slices=args.near_tumor_slices,
        small_tumor_weight=1.0 if on_masks else args.small_tumor_weight,
        small_tumor_pixels=args.small_tumor_pixels,
        mixup_alpha=0.0 if on_masks else args.mixup_alpha,
        tumor_paste_fraction=0.0 if on_masks else args.tumor_paste_fraction,
        seed=args.seed,
        crop_size=args.crop_size if segmenter and args.crop_size else None,
        # Threads preparing batches: on a GPU, augmentation on one core cannot keep up with the model.
        workers=args.workers or 1,
    )


def reference_outputs(args: argparse.Namespace, validation: SliceArrays) -> np.ndarray:
    """The other model's outputs on the validation slices, for the served-pipeline figures.

    Without `--reference-model-dir`, a segmenter run is judged ungated (every slice passes the gate) and a
    classifier run with the true masks behind its gate.
    """
    other = "classifier" if args.model == "segmenter" else "segmenter"
    if not args.reference_model_dir:
        if other == "classifier":
            return np.ones(len(validation.images), np.float32)
        return validation.masks.astype(np.float32)
    manifest = read_manifest(args.reference_model_dir)  # the sha256s checked, loaded in safe mode, as served
    model = load_model(args.reference_model_dir, getattr(manifest, other))
    outputs = model_outputs(model, validation.images)
    return outputs.reshape(-1) if other == "classifier" else outputs[..., 0]


def write_served_architecture(args: argparse.Namespace, model: keras.Model, output_dir: Path) -> None:
    """Save the architecture that evaluate, the comparisons and export build to load this run's checkpoints, when
    it is not the default one (the plain CNN classifier)."""
    if args.model == "segmenter":
        served = build_resunet(full_resolution_output=args.full_resolution_output)
    elif args.classifier_backbone == "cnn-tumor-map":
        served = served_from_tumor_map(model)  # the largest region probability, same weights
    elif args.classifier_backbone != "cnn":
        served = model
    else:
        return
    (output_dir / ARCHITECTURE_NAME).write_text(architecture_json(served))


def load_initial_weights(args: argparse.Namespace, model: keras.Model) -> None:
    """Start `model` from `--initial-weights` (a fine-tune of an earlier model, e.g. the committed one). A plain
    classifier starts the mirror and tumor-map classifiers, a plain segmenter the classifier on its encoder and the
    full-resolution segmenter; layers the start lacks keep their initial values."""
    weights = args.initial_weights
    backbone = args.classifier_backbone if args.model == "classifier" else None
    if backbone == "segmenter-encoder":
        logger.info("new layers (no initial weights): %s", transfer_weights(model, load_segmenter(weights)))
    elif backbone == "cnn-mirror":
        model.set_weights(mirror_start(weights).get_weights())
    elif backbone == "cnn-fine-stem":
        model.set_weights(fine_stem_start(weights).get_weights())
    elif backbone == "cnn-flair":
        model.set_weights(flair_start(weights).get_weights())
    elif backbone == "cnn-tumor-map":
        plain = build_classifier()
        plain.load_weights(weights)
        model.set_weights(tumor_map_classifier_from(plain).get_weights())
    elif args.model == "segmenter" and args.full_resolution_output:
        source = build_resunet()
        source.load_weights(weights)
        logger.info("new layers (no initial weights): %s", transfer_weights(model, source))
    else:
        model.load_weights(weights)


def start_or_resume(
    args: argparse.Namespace, output_dir: Path, resuming: bool, train_batches: SliceBatches
) -> tuple[keras.Model, RunState]:
    """The model and run state to train from: the saved ones of a run to resume (its hard negatives given back to
    `train_batches`), else a freshly compiled model whose served architecture is written first."""
    if resuming:
        state = RunState.read(output_dir)
        model = load_saved_model(output_dir)
        train_batches.hard_negatives = {int(index): tuple(spot) for index, spot in state.hard_negatives.items()}
        logger.info(
            "resuming %s after epoch %d (best %s at %s)", output_dir, state.epochs_done, state.best, state.best_epoch
        )
    else:
        state = RunState()
        full_resolution = args.model == "segmenter" and args.full_resolution_output
        model = compile_model(
            args.model,
            args.learning_rate,
            args.epochs * len(train_batches),
            args.alpha,
            args.jit_compile,
            full_resolution,
            args.classifier_backbone,
            args.label_smoothing if args.model == "classifier" else 0.0,
            args.focal_gamma if args.model == "classifier" else 0.0,
            args.weight_decay,
        )
        write_served_architecture(args, model, output_dir)
        if args.initial_weights:
            load_initial_weights(args, model)
    return model, state


def run_callbacks(
    args: argparse.Namespace,
    output_dir: Path,
    monitor: str,
    validation_arrays: SliceArrays,
    train_batches: SliceBatches,
    state: RunState,
    started: float,
) -> list[keras.callbacks.Callback]:
    """Validation of the served pipeline each epoch, hard-negative mining, the checkpoint that keeps the best epoch
    by `monitor` (and stops early), and the time budget."""
    callbacks = [
        ServedPipelineValidation(
            validation_arrays, args.model, reference_outputs(args, validation_arrays), args.target_sensitivity
        )
    ]
    if args.model == "segmenter" and args.negatives_per_epoch:
        callbacks.append(HardNegativeMiner(train_batches, every=args.hard_negative_every))
    callbacks.append(
        RunCheckpoint(
            output_dir,
            monitor,
            "min" if monitor.endswith("loss") else "max",
            args.patience,
            args.epochs,
            train_batches,
            state,
            keep_epoch_weights=args.keep_epoch_weights,
        )
    )
    if args.max_minutes:
        callbacks.append(TimeBudget(args.max_minutes, started))
    return callbacks


def train(args: argparse.Namespace) -> dict:
    """Run (or resume) one training job and return its summary (also written to `run.json`)."""
    started = time.monotonic()
    output_dir = Path(args.output_dir)
    resuming = has_saved_state(output_dir)
    keras.utils.set_random_seed(args.seed)
    train_arrays, validation_arrays = prepare_split(
        Path(args.data_root), Path(args.split), args.seed, args.limit_patients
    )
    # Only now: a run refused for its data (a missing data root) leaves no half-made run folder behind.
    output_dir.mkdir(parents=True, exist_ok=True)
    if not resuming:
        (output_dir / ARGUMENTS_NAME).write_text(json.dumps(vars(args), indent=2) + "\n")
    train_batches = make_train_batches(args, train_arrays)
    model, state = start_or_resume(args, output_dir, resuming, train_batches)
    monitor = args.monitor or DEFAULT_MONITOR[args.model]
    callbacks = run_callbacks(args, output_dir, monitor, validation_arrays, train_batches, state, started)
    if state.stopped_early or state.epochs_done >= args.epochs:
        logger.info("%s is finished (%d epochs done)", output_dir, state.epochs_done)
    else:
        model.fit(
            train_batches,
            epochs=args.epochs,
            initial_epoch=state.epochs_done,
            callbacks=callbacks,
            verbose=2 if args.verbose else 0,
        )
    state = RunState.read(output_dir)
    summary = {
        "model": args.model,
        "epochs_run": state.epochs_done,
        "best_epoch": state.best_epoch,
        "monitor": monitor,
        "best_value": state.best,
        "stopped_early": state.stopped_early,
        "train_slices": int(len(train_arrays.images)),
        "validation_slices": int(len(validation_arrays.images)),
        "seconds": round(state.seconds, 1),
        "keras_backend": keras.backend.backend(),
        "arguments": dict(vars(args)),
    }
    (output_dir / RUN_NAME).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog or "python -m training.train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_run_arguments(parser.add_argument_group("the run: what is trained, on which data, from where"))
    _add_schedule_arguments(parser.add_argument_group("schedule and checkpoint selection"))
    _add_segmenter_arguments(parser.add_argument_group("segmenter only"))
    _add_classifier_arguments(parser.add_argument_group("classifier only"))
    _add_machine_arguments(parser.add_argument_group("this machine"))
    return parser


def _add_run_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--resume", default=None, metavar="RUN_DIR", help="go on with the run in RUN_DIR, same arguments"
    )
    group.add_argument("--model", choices=["classifier", "segmenter"])
    group.add_argument("--data-root", help="kaggle_3m folder: one sub-folder per patient")
    group.add_argument("--output-dir")
    group.add_argument("--split", default="models/split.json", help="patient split file (made if missing)")
    group.add_argument("--reference-model-dir", default=None, help="models folder holding the other model")
    group.add_argument(
        "--initial-weights",
        default=None,
        help="start from these .weights.h5 instead of random (a segmenter's for the segmenter-encoder backbone)",
    )
    group.add_argument("--seed", type=int, default=2019)
    group.add_argument("--limit-patients", type=int, default=None, help="use only the first N patients (tests)")
    group.add_argument("--verbose", action="store_true")


def _add_schedule_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--epochs", type=int, default=60, help="planned length; also the cosine decay's length")
    group.add_argument("--batch-size", type=int, default=32)
    group.add_argument("--learning-rate", type=float, default=1e-3, help="start of the cosine decay")
    group.add_argument("--patience", type=int, default=12, help="early-stopping patience in epochs")
    group.add_argument("--monitor", default=None, help="epoch figure that picks the best epoch (default by model)")
    group.add_argument("--target-sensitivity", type=float, default=0.95)
    group.add_argument(
        "--weight-decay",
        type=float,
        default=0.0,
        help="AdamW's decoupled weight decay (0: plain Adam): each step shrinks every weight by learning rate x this "
        "of itself, a regularizer for a model that fits its training patients far better than new ones",
    )
    group.add_argument(
        "--augmentation",
        choices=sorted(AUGMENTATIONS),
        default="standard",
        help="how far training slices are varied (strong: wider contrast, gamma, blur and noise)",
    )
    group.add_argument(
        "--keep-epoch-weights",
        action="store_true",
        help="keep every epoch's weights under RUN_DIR/epochs/, to average the tail of the run afterwards",
    )


def _add_segmenter_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--crop-size", type=int, default=128, help="segmenter only: crop side; 0 for whole slices")
    group.add_argument("--alpha", type=float, default=0.7, help="segmenter only: Focal Tversky alpha")
    group.add_argument(
        "--negatives-per-epoch",
        type=int,
        default=300,
        help="segmenter only: tumor-free slices sampled afresh each epoch besides every tumor slice",
    )
    group.add_argument("--hard-negative-every", type=int, default=3, help="segmenter only: epochs between mining")
    group.add_argument(
        "--full-resolution-output",
        action="store_true",
        help="segmenter only: draw the mask at full resolution (see build_resunet)",
    )


def _add_classifier_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--classifier-backbone",
        choices=sorted(CLASSIFIER_BACKBONES),
        default="cnn",
        help="classifier only: its own CNN, the segmenter's encoder (start it with a segmenter's --initial-weights), "
        "EfficientNet-Lite0 (start it with `training.imagenet_weights`' ImageNet weights), or the CNN that also sees "
        "its features mirrored left to right (cnn-mirror; a plain classifier's --initial-weights start it unchanged), "
        "or the CNN without its stem's pooling, its stages at 128 x 128 (cnn-fine-stem; a plain classifier's "
        "--initial-weights start it), or the CNN that reads FLAIR alone (cnn-flair; a plain classifier's "
        "--initial-weights start it), or the CNN behind a per-slice standardization of each channel "
        "(cnn-standardized; trained from scratch)",
    )
    group.add_argument(
        "--near-tumor-negative-weight",
        type=float,
        default=1.0,
        help="classifier only: loss weight of tumor-free slices near a tumor slice (where false positives gather)",
    )
    group.add_argument(
        "--near-tumor-slices", type=int, default=3, help="classifier only: how near, in slices, for that weight"
    )
    group.add_argument(
        "--label-smoothing",
        type=float,
        default=0.0,
        help="classifier only: train towards labels eps/2 and 1-eps/2 (less confident at the tumor's first and last "
        "slices, where the annotation is least sure)",
    )
    group.add_argument(
        "--mixup-alpha",
        type=float,
        default=0.0,
        help="classifier only: blend training slices and their labels in pairs, shares from Beta(alpha, alpha)",
    )
    group.add_argument(
        "--tumor-paste-fraction",
        type=float,
        default=0.0,
        help="classifier only: share of tumor-free training slices given the tumor of a random tumor slice of the same "
        "patient, pasted at the same place (copy-paste augmentation: more small tumors)",
    )
    group.add_argument(
        "--small-tumor-weight",
        type=float,
        default=1.0,
        help="classifier only: loss weight of tumor slices with fewer than --small-tumor-pixels tumor pixels (the "
        "lowest-scoring tumor slices, which set the threshold for the target sensitivity)",
    )
    group.add_argument(
        "--small-tumor-pixels", type=int, default=300, help="classifier only: how small, in pixels, for that weight"
    )
    group.add_argument(
        "--focal-gamma",
        type=float,
        default=0.0,
        help="classifier only: focal cross-entropy with this gamma (0: plain cross-entropy), so that the slices it "
        "gets wrong, not the many it already gets right, drive training",
    )


def _add_machine_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--max-minutes", type=float, default=None, help="wall-clock budget for this invocation")
    group.add_argument(
        "--jit-compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="XLA-compile the training step (about 20 %% faster on CPU, after a compile of a minute or two); "
        "default on, except for the EfficientNet-Lite0 backbone",
    )
    group.add_argument(
        "--workers", type=int, default=None, help="threads preparing batches (default 1; more on a GPU machine)"
    )


def parse_arguments(argv: list[str] | None = None, prog: str | None = None) -> argparse.Namespace:
    """The command line, or for `--resume` the arguments the run started with. `--max-minutes`, and where the
    data lies and how many threads prepare batches (`--data-root`, `--workers`: facts of the machine, not of the
    recipe), may change, so a run begun on a GPU machine can go on here."""
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    if args.resume:
        saved = Path(args.resume) / ARGUMENTS_NAME
        if not saved.is_file():
            parser.error(f"--resume {args.resume}: no {ARGUMENTS_NAME} there, so no run to resume")
        # Defaults first: a run saved before an option existed resumes with that option's default.
        resumed = argparse.Namespace(**{**vars(parser.parse_args([])), **json.loads(saved.read_text())})
        resumed.max_minutes, resumed.verbose, resumed.resume = args.max_minutes, args.verbose, args.resume
        resumed.output_dir = args.resume
        if args.data_root is not None:
            resumed.data_root = args.data_root
        if args.workers is not None:
            resumed.workers = args.workers
        return resumed
    missing = [name for name in ("model", "data_root", "output_dir") if getattr(args, name) is None]
    if missing:
        parser.error("the following arguments are required: " + ", ".join(f"--{n.replace('_', '-')}" for n in missing))
    if args.small_tumor_weight <= 0 or args.near_tumor_negative_weight <= 0:
        parser.error("--small-tumor-weight and --near-tumor-negative-weight must be above 0")
    if not 0.0 <= args.tumor_paste_fraction <= 1.0:
        parser.error(f"--tumor-paste-fraction {args.tumor_paste_fraction}: must be between 0 and 1")
    if args.weight_decay < 0:
        parser.error(f"--weight-decay {args.weight_decay}: must be 0 (plain Adam) or more")
    if args.focal_gamma < 0:
        parser.error(f"--focal-gamma {args.focal_gamma}: must be 0 (plain cross-entropy) or more")
    if args.model == "classifier" and args.classifier_backbone in MASK_TRAINED_BACKBONES:
        # Options about one label per slice, which a classifier trained on the masks has not got.
        label_only = {
            "--label-smoothing": args.label_smoothing != 0.0,
            "--mixup-alpha": args.mixup_alpha != 0.0,
            "--tumor-paste-fraction": args.tumor_paste_fraction != 0.0,
            "--near-tumor-negative-weight": args.near_tumor_negative_weight != 1.0,
            "--focal-gamma": args.focal_gamma != 0.0,
            "--small-tumor-weight": args.small_tumor_weight != 1.0,
        }
        given = [option for option, set_ in label_only.items() if set_]
        if given:
            parser.error(
                f"{', '.join(given)}: not for --classifier-backbone {args.classifier_backbone}, "
                "which learns from the masks"
            )
    return args


def main(argv: list[str] | None = None, prog: str | None = None) -> None:
    """`python -m training.train`, or `brain-tumor train` (`prog`: the name help and errors give the command)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    with usage_errors(build_parser(prog).prog):
        summary = train(parse_arguments(argv, prog))
    logger.info("finished: %s", json.dumps({k: v for k, v in summary.items() if k != "arguments"}))


if __name__ == "__main__":
    main()
