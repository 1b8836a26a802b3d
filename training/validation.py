"""Per-epoch validation of what the service delivers, and hard-negative mining for the segmenter.

A loss averaged over mixed batches says little about the served pipeline (classifier gate, then segmenter, then
mask threshold). `ServedPipelineValidation` runs that pipeline on the validation patients after every epoch and puts
its figures into the epoch's logs, where the checkpoint and early-stopping logic (and `history.csv`) see them:

- `val_volume_dice`: mean per-patient volume Dice of the gated masks (the figure Buda et al. 2019 report);
- `val_empty_slice_mask_rate`: share of tumor-free slices that get a mask (NaN when there is none);
- `val_auc`, `val_specificity` (at the highest threshold with sensitivity >= `target_sensitivity`).

One of the two models is the one in training; the other is a fixed reference (the committed model, for instance),
whose outputs on the validation slices are computed once.
"""

from __future__ import annotations

import json
import logging

import keras
import numpy as np

from training.data import SliceArrays, SliceBatches
from training.evaluation_metrics import classification_metrics, false_mask_rate, volume_dice_by_patient
from training.pipeline_choices import choose_classifier_threshold
from training.served_masks import gated_masks
from training.slice_predictions import model_outputs

logger = logging.getLogger(__name__)


class ServedPipelineValidation(keras.callbacks.Callback):
    """Add the served pipeline's validation figures to each epoch's logs.

    Parameters
    ----------
    validation
        The validation patients' slices.
    trained
        "classifier" or "segmenter": which of the two models `self.model` is.
    reference_outputs
        The other model's outputs on `validation.images`: tumor probabilities (N,) for a segmenter run, mask
        probability maps (N, 256, 256) for a classifier run.
    target_sensitivity
        The classifier threshold is the highest one with at least this sensitivity on the validation slices.
    mask_threshold
        Mask probability at or above which a pixel is tumor.
    """

    def __init__(
        self,
        validation: SliceArrays,
        trained: str,
        reference_outputs: np.ndarray,
        target_sensitivity: float = 0.95,
        mask_threshold: float = 0.5,
        batch_size: int = 16,
    ) -> None:
        super().__init__()
        if trained not in ("classifier", "segmenter"):
            raise ValueError(f"trained must be 'classifier' or 'segmenter'; got {trained!r}")
        self.validation = validation
        self.trained = trained
        self.reference_outputs = reference_outputs
        self.target_sensitivity = target_sensitivity
        self.mask_threshold = mask_threshold
        self.batch_size = batch_size

    def figures(self) -> dict[str, float]:
        """Run the pipeline with the current weights and return its validation figures."""
        outputs = model_outputs(self.model, self.validation.images, self.batch_size)
        if self.trained == "classifier":
            # The largest output: the one probability of a plain classifier, the largest region's of a tumor map.
            probabilities, maps = outputs.reshape(len(outputs), -1).max(axis=1), self.reference_outputs
        else:
            probabilities, maps = self.reference_outputs, outputs[..., 0]
        return served_pipeline_figures(
            self.validation, probabilities, maps, self.target_sensitivity, self.mask_threshold
        )

    def on_train_begin(self, logs: dict | None = None) -> None:
        # Where the run starts from: the figures of the initial (e.g. committed) or resumed weights.
        logger.info("validation before training: %s", json.dumps(self.figures()))

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if logs is not None:
            logs.update(self.figures())


def served_pipeline_figures(
    arrays: SliceArrays,
    probabilities: np.ndarray,
    maps: np.ndarray,
    target_sensitivity: float,
    mask_threshold: float,
) -> dict[str, float]:
    """The gated pipeline's figures on `arrays`, the classifier threshold chosen there for `target_sensitivity`."""
    labels = arrays.labels
    threshold = choose_classifier_threshold(labels, probabilities, target_sensitivity)
    classification = classification_metrics(labels, probabilities, threshold)
    masks = gated_masks(probabilities, maps, threshold, mask_threshold)
    empty_rate = false_mask_rate(labels, masks)
    return {
        "val_volume_dice": float(np.mean(list(volume_dice_by_patient(arrays, masks).values()))),
        # NaN, not the 0.0 of a perfect rate, when there is no tumor-free slice: a run monitoring it stops there.
        "val_empty_slice_mask_rate": float("nan") if empty_rate is None else empty_rate,
        "val_auc": float(classification["roc_auc"] or 0.0),
        "val_specificity": float(classification["specificity"]),
        "val_sensitivity": float(classification["sensitivity"]),
        "val_classifier_threshold": float(threshold),
    }


class HardNegativeMiner(keras.callbacks.Callback):
    """Every `every` epochs, find tumor-free training slices where the segmenter draws a mask.

    The segmenter runs on `sample_size` tumor-free slices drawn for that epoch; each slice where it marks any pixel
    is remembered with the spot of its highest probability, and `SliceBatches` then crops those slices there. Only
    training slices are used, so validation stays untouched.
    """

    def __init__(
        self, batches: SliceBatches, every: int = 3, sample_size: int = 256, mask_threshold: float = 0.5
    ) -> None:
        super().__init__()
        self.batches = batches
        self.every = every
        self.sample_size = sample_size
        self.mask_threshold = mask_threshold

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if (epoch + 1) % self.every:
            return
        negatives = np.flatnonzero(self.batches.arrays.labels == 0)
        rng = np.random.default_rng([self.batches.seed, epoch, 7])
        sample = np.sort(rng.choice(negatives, size=min(self.sample_size, len(negatives)), replace=False))
        maps = model_outputs(self.model, self.batches.arrays.images[sample])[..., 0]
        for index, probability_map in zip(sample, maps, strict=True):
            if probability_map.max() >= self.mask_threshold:
                row, column = np.unravel_index(int(probability_map.argmax()), probability_map.shape)
                self.batches.hard_negatives[int(index)] = (int(row), int(column))
            else:
                self.batches.hard_negatives.pop(int(index), None)
        if logs is not None:
            logs["hard_negatives"] = float(len(self.batches.hard_negatives))
