"""The masks the service would answer, rebuilt from the models' outputs: gated by the classifier
(`app.core.gate.gate`), as a slice answered alone shows them (`mask_shown_alone`), and after each patient's series
clean-up (`drop_small_components`).

Built with the service's own functions, so the figures measured on them are those of what is served.
"""

from __future__ import annotations

import numpy as np

from app.core.gate import gate, mask_shown_alone
from app.core.series_postprocessing import drop_small_components
from training.data import SliceArrays


def gated_masks(
    probabilities: np.ndarray, maps: np.ndarray, classifier_threshold: float, mask_threshold: float
) -> np.ndarray:
    """Boolean masks (N, H, W) of the served pipeline (`app.core.gate.gate`): empty where the classifier is negative."""
    sizes = [tuple(maps.shape[1:3])] * len(maps)
    masks = np.zeros(maps.shape[:3], dtype=bool)
    gated = gate(probabilities, lambda positive: maps[positive], sizes, classifier_threshold, mask_threshold)
    for index, mask in enumerate(gated):
        if mask is not None:
            masks[index] = mask > 0
    return masks


def masks_shown_alone(
    probabilities: np.ndarray, masks: np.ndarray, min_probability: float, min_pixels: int = 0
) -> np.ndarray:
    """The gated masks as slices sent one by one get them (`app.series.result.single_slice_answers`): emptied below
    `min_probability`, without their pieces under `min_pixels`."""
    shown = np.zeros_like(masks, dtype=bool)
    for index, probability in enumerate(np.asarray(probabilities).reshape(-1)):
        kept = mask_shown_alone(masks[index], float(probability), min_probability, min_pixels)
        if kept is not None:
            shown[index] = kept
    return shown


def clean_by_patient(arrays: SliceArrays, masks: np.ndarray, min_voxels: int) -> np.ndarray:
    """Series clean-up of each patient's masks as one volume (slices are in volume order, see `find_slices`)."""
    cleaned = masks.copy()
    for patient in set(arrays.patient_ids):
        rows = np.flatnonzero(arrays.patient_ids == patient)
        in_order = rows[np.argsort(arrays.slice_numbers[rows])]
        cleaned[in_order] = drop_small_components(masks[in_order], min_voxels)
    return cleaned
