"""Clean-up of masks: drop small 3-D blobs that no neighbouring slice confirms, and small pieces of a lone slice.

A false-positive blob on one slice rarely lines up with blobs on the slices above and below it, while a tumor spans
several adjacent slices. With the slices of one series in order, masks are joined into 3-D connected components
(26-connectivity: pixels touching by a face, an edge or a corner, on the same or an adjacent slice), and components
with fewer than `min_voxels` voxels are removed. Voxels are counted on the model's 256 x 256 grid, so the setting
means the same for every series whatever its pixel spacing; the value is chosen on the validation patients
(`training.evaluate`) and written into the model manifest. A single slice has no neighbours and is left unchanged;
slices known not to be neighbours (a gap in the series) are not joined.

A slice answered on its own has no neighbours to confirm it, so it gets the 2-D counterpart (`drop_small_pieces`):
mask pieces (8-connectivity) under `min_pixels` pixels of the 256 x 256 grid are removed, the size chosen on the
validation patients like the series' (the manifest's `single_slice_min_component_pixels`).

A mask is counted on the grid the models saw its slice at: its own size, or `seen` (rows, columns) when the slice
was resampled for them (a DICOM slice of non-square pixels, `app.dicom.square_pixels`): a stored pixel 1.33 times as
tall as wide is 1.33 cells of the models' grid, not one.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import cv2
import numpy as np
from scipy import ndimage

from app.core.preprocessing import MODEL_INPUT_SIZE, model_grid_placement

_NEIGHBOURS_26 = np.ones((3, 3, 3), dtype=bool)


def drop_small_components(masks: np.ndarray, min_voxels: int) -> np.ndarray:
    """Return a copy of `masks` without the 3-D connected components smaller than `min_voxels`.

    Parameters
    ----------
    masks
        Boolean or 0/1 array (slices, height, width): the masks of one series, slices in anatomical order.
    min_voxels
        Components with fewer voxels are removed; 0 keeps everything.

    Returns
    -------
    numpy.ndarray
        Boolean array of the same shape.

    Raises
    ------
    ValueError
        If `masks` is not three-dimensional or `min_voxels` is negative.
    """
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"masks must be (slices, height, width); got shape {masks.shape}")
    if min_voxels < 0:
        raise ValueError(f"min_voxels must be >= 0; got {min_voxels}")
    cleaned = masks.astype(bool)
    if len(cleaned) < 2 or min_voxels == 0 or not cleaned.any():
        return cleaned
    labels, count = ndimage.label(cleaned, structure=_NEIGHBOURS_26)
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    keep = sizes >= min_voxels
    keep[0] = False
    return keep[labels]


def clean_series_masks(
    masks: Sequence[np.ndarray | None],
    min_voxels: int,
    breaks: Collection[int] = (),
    seen: tuple[int, int] | None = None,
) -> list[np.ndarray | None]:
    """`drop_small_components` for the masks a service returns: each at its slice's own size, None when empty.

    `min_voxels` counts voxels of the model's 256 x 256 grid. Slices of at most 256 pixels along a side are joined
    at their own size, `min_voxels` scaled to it. Larger slices are joined on the model's grid itself
    (`_model_grid_cells`): a grid cell is in a mask when one of its pixels is, and a pixel is kept when its cell's
    component is. So the clean-up's memory stays that of a 256 x 256 volume, whatever the slices' size: at their own
    size, 23 slices of 4096 x 4096 took 5 GiB. Slices of different sizes cannot form one volume: their masks come
    back unchanged. A mask the clean-up empties becomes None. `breaks` lists the places k where slices k and k + 1
    are no neighbours (slices missing between them): an empty slice goes between them, so no component spans the
    gap. `seen`: the slices' size as the models saw them, when not the masks' own (see the module's docstring).
    """
    present = [mask for mask in masks if mask is not None]
    if len(masks) < 2 or min_voxels == 0 or not present:
        return list(masks)
    shape = present[0].shape
    if any(mask.shape != shape for mask in present):
        return list(masks)
    # Row of each slice in the volume, one empty row further down after each break.
    rows = [index + sum(1 for place in breaks if place < index) for index in range(len(masks))]
    if min(shape) <= MODEL_INPUT_SIZE:  # at most the grid's size along a side: a cell's pixels touch each other's
        volume = np.zeros((rows[-1] + 1, *shape), dtype=bool)
        for row, mask in zip(rows, masks, strict=True):
            if mask is not None:
                volume[row] = mask > 0
        scaled = max(1, round(min_voxels * model_cell_pixels(shape, seen)))
        cleaned = drop_small_components(volume, scaled)[rows]
        return [
            None if mask is None or not kept.any() else kept.astype(mask.dtype)
            for mask, kept in zip(masks, cleaned, strict=True)
        ]
    top, left, rows_on_grid, columns_on_grid = model_grid_placement(*(seen or shape))
    row_cells = _model_grid_cells(shape[0], rows_on_grid, top)
    column_cells = _model_grid_cells(shape[1], columns_on_grid, left)
    grid = np.zeros((rows[-1] + 1, MODEL_INPUT_SIZE, MODEL_INPUT_SIZE), dtype=bool)
    for row, mask in zip(rows, masks, strict=True):
        if mask is not None:
            grid[row] = _occupied_cells(mask, row_cells, column_cells)
    kept_cells = drop_small_components(grid, min_voxels)
    return [
        _keep_cells(mask, kept_cells[row], grid[row], row_cells, column_cells)
        for row, mask in zip(rows, masks, strict=True)
    ]


def model_cell_pixels(shape: tuple[int, ...], seen: tuple[int, int] | None = None) -> float:
    """The slice pixels one cell of the model's 256 x 256 grid covers, for a slice of `shape` (H, W) that the models
    saw at `seen` (None: at `shape`), as `model_grid_placement` scales it (its aspect kept: a cell is square on a slice
    of square pixels)."""
    _, _, rows, columns = model_grid_placement(*(seen or shape[:2]))
    return shape[0] / rows * shape[1] / columns


def _model_grid_cells(length: int, cells: int, offset: int) -> np.ndarray:
    """The model-grid row (or column) each of `length` pixel rows (or columns) falls in, as the resize to `cells`
    grid rows (or columns), `offset` from the grid's edge, maps them (`model_grid_placement`)."""
    return offset + (np.arange(length) * cells) // length


def _occupied_cells(mask: np.ndarray, row_cells: np.ndarray, column_cells: np.ndarray) -> np.ndarray:
    """The model-grid cells (256 x 256, bool) that hold a pixel of `mask`; no array of the mask's size but its
    boolean copy."""
    occupied = mask > 0
    for axis, cells in enumerate((row_cells, column_cells)):
        starts = np.flatnonzero(np.diff(cells, prepend=-1))  # first pixel of each cell: `cells` never decreases
        reduced = np.logical_or.reduceat(occupied, starts, axis=axis)
        shape = list(reduced.shape)
        shape[axis] = MODEL_INPUT_SIZE
        grown = np.zeros(shape, dtype=bool)
        np.moveaxis(grown, axis, 0)[cells[starts]] = np.moveaxis(reduced, axis, 0)
        occupied = grown
    return occupied


def _keep_cells(
    mask: np.ndarray | None,
    kept: np.ndarray,
    occupied: np.ndarray,
    row_cells: np.ndarray,
    column_cells: np.ndarray,
) -> np.ndarray | None:
    """`mask` without its pixels whose cell the clean-up dropped: the mask itself when it dropped none, None when
    it dropped all."""
    if mask is None or not kept.any():
        return None
    if np.array_equal(kept, occupied):
        return mask
    return (mask * kept[np.ix_(row_cells, column_cells)]).astype(mask.dtype)


def drop_small_pieces(
    mask: np.ndarray | None, min_pixels: int, seen: tuple[int, int] | None = None
) -> np.ndarray | None:
    """Return `mask` (one slice, any size) without its 2-D pieces under `min_pixels`; None when nothing is left.

    `min_pixels` counts pixels of the model's 256 x 256 grid and is scaled to the mask's own grid (its slice seen by
    the models at `seen`, None: at its own size), as the series clean-up scales its voxels; 0 (or a None mask)
    returns the mask unchanged.
    """
    if min_pixels < 0:
        raise ValueError(f"min_pixels must be >= 0; got {min_pixels}")
    if mask is None or min_pixels == 0:
        return mask
    scaled = max(1, round(min_pixels * model_cell_pixels(mask.shape, seen)))
    if np.count_nonzero(mask) < scaled:  # every piece is smaller than that
        return None
    _, pieces, stats, _ = cv2.connectedComponentsWithStats((mask > 0).astype(np.uint8), connectivity=8)
    keep = stats[:, cv2.CC_STAT_AREA] >= scaled
    keep[0] = False  # the background
    if keep[1:].all():  # the usual case: one tumor, no specks
        return mask
    return keep[pieces].astype(mask.dtype) if keep.any() else None
