"""The gate: the classifier decides which slices the segmenter sees, and the mask threshold makes its masks.

classifier probability >= classifier threshold -> segmenter on those slices only -> probability map (resized to the
slice's size) >= mask threshold. Serving (`app.inference.Predictor`, and the micro-batcher in its two stages) and
evaluation (`training.evaluate`) all decide through these functions, so evaluation measures what the service does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import cv2
import numpy as np

from app.core.preprocessing import model_grid_placement
from app.core.series_postprocessing import drop_small_pieces


def classifier_positive(probabilities: np.ndarray, classifier_threshold: float) -> np.ndarray:
    """Boolean per slice: True where the classifier calls it tumor (`>= classifier_threshold`)."""
    return np.asarray(probabilities) >= classifier_threshold


def flip_average(run: Callable[[np.ndarray], np.ndarray], batch: np.ndarray) -> np.ndarray:
    """The mean of `run`'s outputs for a preprocessed batch (N, H, W, C) and for its left-right mirror.

    How the classifier is served when its manifest entry says `flip_average`: a test-time augmentation that the
    validation patients and the cross-validation folds' out-of-fold predictions both preferred (model card).
    """
    return (np.asarray(run(batch)) + np.asarray(run(np.ascontiguousarray(batch[:, :, ::-1])))) / 2


def mask_shown_alone(
    mask: np.ndarray | None,
    probability: float,
    min_probability: float,
    min_pixels: int = 0,
    seen: tuple[int, int] | None = None,
) -> np.ndarray | None:
    """The mask a positive slice answered on its own (no series clean-up) shows: none below `min_probability` (the
    manifest's `single_slice_mask_min_probability`), else `mask` without its pieces under `min_pixels`
    (`single_slice_min_component_pixels`, `drop_small_pieces`, counted on the grid the models saw the slice at,
    `seen`); both chosen on the validation patients."""
    if mask is None or probability < min_probability:
        return None
    return drop_small_pieces(mask, min_pixels, seen)


def probability_to_mask(probability: np.ndarray, size: tuple[int, int], threshold: float) -> np.ndarray:
    """Resize a model-resolution probability map to `size` (H, W), then threshold it (`>= threshold`).

    Probabilities are interpolated linearly before thresholding, so the outline at the input's resolution is smooth
    rather than the blocky upscale of a 256x256 binary mask.
    """
    probability = np.asarray(probability, dtype=np.float32)
    if probability.ndim == 3:
        probability = probability[:, :, 0]
    height, width = size
    if probability.shape != (height, width):
        # Where `preprocess_slice` put the slice on the model's (square) grid.
        top, left, rows, columns = model_grid_placement(height, width, grid=probability.shape[0])
        probability = probability[top : top + rows, left : left + columns]
        if probability.shape != (height, width):
            probability = cv2.resize(probability, (width, height), interpolation=cv2.INTER_LINEAR)
    return (probability >= threshold).astype(np.uint8)


def gate(
    probabilities: np.ndarray,
    segment: Callable[[np.ndarray], np.ndarray],
    sizes: Sequence[tuple[int, int]],
    classifier_threshold: float,
    mask_threshold: float,
) -> list[np.ndarray | None]:
    """The gated masks of a batch: None for a slice the classifier calls negative, else its uint8 0/1 mask.

    Parameters
    ----------
    probabilities
        The classifier's tumor probability per slice, shape (N,).
    segment
        Called once with the indices of the positive slices (skipped when there are none); returns their segmenter
        probability maps, (P, 256, 256). Only positives reach the segmenter: it costs more than the classifier.
    sizes
        (H, W) each mask is made at, one per slice.
    classifier_threshold, mask_threshold
        The manifest's thresholds.
    """
    probabilities = np.asarray(probabilities).reshape(-1)
    if len(sizes) != len(probabilities):
        raise ValueError(f"sizes must be one per slice; got {len(sizes)} sizes for {len(probabilities)} slices")
    positive = np.flatnonzero(classifier_positive(probabilities, classifier_threshold))
    masks: list[np.ndarray | None] = [None] * len(probabilities)
    if positive.size:
        maps = segment(positive)
        for index, probability_map in zip(positive.tolist(), maps, strict=True):
            masks[index] = probability_to_mask(probability_map, sizes[index], mask_threshold)
    return masks
