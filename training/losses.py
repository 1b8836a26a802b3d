"""Focal Tversky loss, Tversky score and Dice, written with `keras.ops` only so they run on any Keras backend.

Tversky index (Salehi et al. 2017): TI = (TP + s) / (TP + alpha * FN + (1 - alpha) * FP + s). With alpha > 0.5 a
missed tumor pixel costs more than a false one, which suits small lesions. The focal form (Abraham & Khan 2019)
is (1 - TI) ** gamma; gamma < 1 keeps the gradient large when TI is already high. All sums run over the whole
batch, so a batch of tumor-free slices still gives a defined value thanks to the smoothing term s.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

# A backend tensor (TensorFlow, JAX, or a numpy array): keras.ops takes any of them, and they share no type.
Tensor = Any
SMOOTH = 1.0


def _flatten_pair(y_true: Tensor, y_pred: Tensor) -> tuple[Tensor, Tensor]:
    y_true = ops.reshape(ops.cast(y_true, "float32"), (-1,))
    y_pred = ops.reshape(ops.cast(y_pred, "float32"), (-1,))
    return y_true, y_pred


@keras.saving.register_keras_serializable(package="brain_tumor")
def tversky_score(y_true: Tensor, y_pred: Tensor, alpha: float = 0.7, smooth: float = SMOOTH) -> Tensor:
    """Tversky index of the batch, in [0, 1]; 1 is a perfect mask."""
    y_true, y_pred = _flatten_pair(y_true, y_pred)
    true_positive = ops.sum(y_true * y_pred)
    false_negative = ops.sum(y_true * (1.0 - y_pred))
    false_positive = ops.sum((1.0 - y_true) * y_pred)
    return (true_positive + smooth) / (true_positive + alpha * false_negative + (1.0 - alpha) * false_positive + smooth)


@keras.saving.register_keras_serializable(package="brain_tumor")
def focal_tversky_loss(y_true: Tensor, y_pred: Tensor, alpha: float = 0.7, gamma: float = 0.75) -> Tensor:
    """(1 - Tversky index) ** gamma over the batch."""
    return ops.power(1.0 - tversky_score(y_true, y_pred, alpha=alpha), gamma)


@keras.saving.register_keras_serializable(package="brain_tumor")
def dice_coefficient(y_true: Tensor, y_pred: Tensor, smooth: float = SMOOTH) -> Tensor:
    """Soft Dice of the batch: (2 * TP + s) / (|true| + |pred| + s)."""
    y_true, y_pred = _flatten_pair(y_true, y_pred)
    intersection = ops.sum(y_true * y_pred)
    return (2.0 * intersection + smooth) / (ops.sum(y_true) + ops.sum(y_pred) + smooth)


@keras.saving.register_keras_serializable(package="brain_tumor")
class FocalTverskyLoss(keras.losses.Loss):
    """`focal_tversky_loss` with its alpha and gamma kept in the config, so a saved run reloads with the same loss.

    alpha weighs missed tumor against false tumor: 0.7 (the seed recipe) favours recall; 0.5 weighs both alike,
    as Dice does.
    """

    def __init__(self, alpha: float = 0.7, gamma: float = 0.75, name: str = "focal_tversky_loss", **kwargs) -> None:
        super().__init__(name=name, **kwargs)
        self.alpha = alpha
        self.gamma = gamma

    def call(self, y_true: Tensor, y_pred: Tensor) -> Tensor:
        return focal_tversky_loss(y_true, y_pred, alpha=self.alpha, gamma=self.gamma)

    def get_config(self) -> dict:
        return {**super().get_config(), "alpha": self.alpha, "gamma": self.gamma}


@keras.saving.register_keras_serializable(package="brain_tumor")
def tumor_map_loss(y_true: Tensor, y_pred: Tensor) -> Tensor:
    """Binary cross-entropy of a tumor-map classifier (`training.classifier_variants.build_tumor_map_classifier`).

    `y_true` is the full-size mask (B, H, W, 1), `y_pred` the region map (B, h, w, 1). A region's target is 1 when
    any of its pixels is tumor; the slice's, when any region's is. Both the regions and the slice (the largest
    region probability, what is served) count, so the map learns where the tumor is and the served figure stays
    a calibrated probability.
    """
    y_true = ops.cast(y_true, "float32")
    y_pred = ops.cast(y_pred, "float32")
    region_size = y_true.shape[1] // y_pred.shape[1]
    regions = ops.max_pool(y_true, pool_size=region_size, strides=region_size, padding="valid")
    region_loss = ops.mean(keras.losses.binary_crossentropy(regions, y_pred))
    slice_true = ops.max(regions, axis=(1, 2, 3))
    slice_pred = ops.max(y_pred, axis=(1, 2, 3))
    slice_loss = ops.mean(keras.losses.binary_crossentropy(slice_true[:, None], slice_pred[:, None]))
    return region_loss + slice_loss
