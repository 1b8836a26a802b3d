"""DICOM slices of non-square pixels resampled to square ones for the models, and their masks mapped back.

The models learned TCGA-LGG's slices, whose pixels are square. A scanner may store pixels 1.25 mm tall and 0.9375 mm
wide (Pixel Spacing `1.25\\0.9375`, a rectangular field of view on a square matrix): read pixel for pixel, the models
see the anatomy squeezed to three quarters of its height. So the model input is resampled to the slice's true
proportions (its long side kept, the other scaled by the spacings), and its mask resampled back, so that every
answer (masks, SEG, overlay, volume) stays on the stored pixel grid. A slice without Pixel Spacing is read as stored.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from app.core.preprocessing import resized, slice_shape_problem

PIXEL_ASPECT_TOLERANCE = 0.01
"""Pixel spacings whose rows and columns differ by at most this share are square (rounding in Pixel Spacing)."""


@dataclass(frozen=True)
class SquarePixels:
    """Resample a slice of `stored` (rows, columns) to `resampled` (rows, columns) of square pixels, and back."""

    stored: tuple[int, int]
    resampled: tuple[int, int]

    @property
    def is_identity(self) -> bool:
        return self.stored == self.resampled

    def apply(self, image: np.ndarray) -> np.ndarray:
        """`image` (H x W, or H x W x channels, uint8, of the stored size) at the resampled size."""
        if self.is_identity:
            return image
        return resized(image, *self.resampled)

    def undo(self, mask: np.ndarray) -> np.ndarray:
        """A 0/1 mask of the resampled slice back on the stored grid (interpolated, then cut at one half: smoother
        than the nearest pixel, and a mask's area in mm^2 stays what it was)."""
        if self.is_identity:
            return mask
        back = resized(mask.astype(np.float32), *self.stored)
        return (back >= 0.5).astype(mask.dtype)


def pixel_aspect(pixel_spacing: tuple[float, ...] | None) -> float:
    """How many times as tall as wide a pixel of `pixel_spacing` (row spacing, column spacing in mm) is; 1.0 when
    unknown or square within `PIXEL_ASPECT_TOLERANCE`."""
    if not pixel_spacing or len(pixel_spacing) != 2 or min(pixel_spacing) <= 0:
        return 1.0
    aspect = pixel_spacing[0] / pixel_spacing[1]
    return 1.0 if abs(aspect - 1.0) <= PIXEL_ASPECT_TOLERANCE else aspect


def square_pixels(shape: tuple[int, ...], pixel_spacing: tuple[float, ...] | None) -> SquarePixels:
    """How to resample a slice of `shape` (rows, columns, ...) stored with `pixel_spacing` to square pixels: the
    side that is longer in mm keeps the stored long side's pixel count. No resampling (identity) for square or
    unknown spacing, or when the proportions would be no MR slice's (`resamplable`)."""
    stored = (int(shape[0]), int(shape[1]))
    aspect = pixel_aspect(pixel_spacing)
    if aspect == 1.0:
        return SquarePixels(stored, stored)
    height, width = stored[0] * aspect, float(stored[1])  # in units of a column spacing
    scale = max(stored) / max(height, width)
    resampled = (max(1, round(height * scale)), max(1, round(width * scale)))
    if not resamplable(resampled):
        return SquarePixels(stored, stored)
    return SquarePixels(stored, resampled)


def resamplable(size: tuple[int, int]) -> bool:
    """Whether a slice of `size` is one the models can read (`app.core.preprocessing.slice_shape_problem`): a Pixel
    Spacing of 100:1 would make a line of the slice, which is no MR slice; such a slice is read as stored, as before
    this module, and its answer's note says its pixels are not square."""
    return slice_shape_problem(*size) is None
