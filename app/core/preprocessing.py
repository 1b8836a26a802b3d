"""The one image transform shared by training and serving, and the channel order both read slices in.

Training, evaluation, the HTTP service and the CLI all call `preprocess_slice`, so a slice is turned into model input
the same way everywhere (no train/serve skew). The preprocessing id is written into the model manifest; change it
whenever the numbers this function produces change.
"""

from __future__ import annotations

import cv2
import numpy as np

PREPROCESSING_ID = "rgb8-resize256-area-scale1/255-v1"
# Names the numbers a square slice gets; the padding of a rectangular slice (`model_grid_placement`) came later and
# left those unchanged, and so the ID too.
MODEL_INPUT_SIZE = 256
INPUT_SHAPE = (MODEL_INPUT_SIZE, MODEL_INPUT_SIZE, 3)

CHANNEL_ORDER = ("pre-contrast", "FLAIR", "post-contrast")
"""The kaggle_3m composite's channels, in the order the models read them."""
FLAIR_CHANNEL = CHANNEL_ORDER.index("FLAIR")

MIN_IMAGE_SIDE = 32
"""Smaller images hold too few pixels to be an MR slice (the coarsest clinical matrices are 64 x 64): scaled up to
256 x 256 they would still get an answer, with a confidence that means nothing."""


MAX_ASPECT_RATIO = 8
"""A slice whose long side is more than this many times its short side is no MR slice (clinical matrices are at most
about 2:1): squeezed to 256 x 256 it would get an answer that means nothing, and a viewer shows it as a line."""


class InvalidImageError(ValueError):
    """An image array that cannot be a brain MRI slice: wrong rank, channels or dtype, too small, or too long and
    thin."""


def flair_only(images: np.ndarray) -> np.ndarray:
    """Replace pre- and post-contrast with FLAIR (..., H, W, 3), as when a PACS sends a FLAIR series alone."""
    return np.repeat(images[..., FLAIR_CHANNEL : FLAIR_CHANNEL + 1], 3, axis=-1)


def as_three_channel_uint8(image: np.ndarray) -> np.ndarray:
    """Return `image` as HxWx3 uint8 in the kaggle_3m channel order (pre-contrast, FLAIR, post-contrast), after
    checking that it can be a slice (`MIN_IMAGE_SIDE`, `MAX_ASPECT_RATIO`); a view where it can be, else a copy.

    A single-channel image is taken as FLAIR and copied into all three channels, which is what the dataset itself
    does for patients whose pre- or post-contrast series is missing. An alpha channel is dropped.
    """
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise InvalidImageError(f"image must be HxW, HxWx1, HxWx3 or HxWx4; got shape {tuple(image.shape)}")
    image = image[:, :, :3]
    if image.dtype != np.uint8:
        raise InvalidImageError(f"image must be uint8 after decoding; got dtype {image.dtype}")
    problem = slice_shape_problem(*image.shape[:2])
    if problem is not None:
        raise InvalidImageError(problem)
    return image


def slice_shape_problem(height: int, width: int) -> str | None:
    """Why `height` x `width` pixels is no brain MRI slice the models can read, or None when it is one."""
    if min(height, width) < MIN_IMAGE_SIDE:
        return f"image is {width}x{height} pixels; a brain MRI slice has at least {MIN_IMAGE_SIDE} pixels on each side"
    if max(height, width) > MAX_ASPECT_RATIO * min(height, width):
        return (
            f"image is {width}x{height} pixels; a brain MRI slice's long side is at most {MAX_ASPECT_RATIO} times "
            "its short side"
        )
    return None


def resized(image: np.ndarray, rows: int, columns: int) -> np.ndarray:
    """`image` at `rows` x `columns`: INTER_AREA when shrinking (it averages: no aliasing), linear when enlarging."""
    shrinking = image.shape[0] > rows or image.shape[1] > columns
    return cv2.resize(image, (columns, rows), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def model_grid_placement(height: int, width: int, grid: int = MODEL_INPUT_SIZE) -> tuple[int, int, int, int]:
    """(top, left, rows, columns): where a slice of `height` x `width` pixels lies on the model's 256 x 256 grid
    (or a square map of `grid` cells): scaled until its long side fills it, its aspect kept, centred on background.

    Why: a rectangular matrix (256 x 208, from a rectangular field of view) stretched to a square shows the models
    the anatomy wider than it is: 7.4 % less tumor volume on one study than the same slices padded. The models learned
    square slices only, which this leaves as they were, so the preprocessing's ID is unchanged. The mask comes back from
    the same place (`app.core.gate.probability_to_mask`)."""
    scale = grid / max(height, width)
    rows = max(1, min(grid, round(height * scale)))
    columns = max(1, min(grid, round(width * scale)))
    return (grid - rows) // 2, (grid - columns) // 2, rows, columns


def preprocess_slice(image: np.ndarray) -> np.ndarray:
    """Turn one decoded slice into model input: float32 array of shape (256, 256, 3) with values in [0, 1].

    Parameters
    ----------
    image
        uint8 array, HxW (taken as FLAIR) or HxWx3 / HxWx4 in pre-contrast, FLAIR, post-contrast order, any size
        from `MIN_IMAGE_SIDE` pixels a side.

    Returns
    -------
    numpy.ndarray
        float32 (256, 256, 3).

    Raises
    ------
    InvalidImageError
        If the array has a shape, size or dtype that is not an 8-bit slice.
    """
    image = as_three_channel_uint8(np.asarray(image))
    height, width = image.shape[:2]
    top, left, rows, columns = model_grid_placement(height, width)
    if (rows, columns) != (height, width):
        image = resized(image, rows, columns)
    if (rows, columns) != (MODEL_INPUT_SIZE, MODEL_INPUT_SIZE):  # a rectangular slice: centred, never stretched
        square = np.zeros((MODEL_INPUT_SIZE, MODEL_INPUT_SIZE, 3), dtype=np.uint8)
        square[top : top + rows, left : left + columns] = image
        image = square
    return image.astype(np.float32) * np.float32(1.0 / 255.0)
