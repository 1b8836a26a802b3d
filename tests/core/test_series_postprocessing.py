from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from app.core.series_postprocessing import clean_series_masks, drop_small_components, drop_small_pieces


def empty_series(slices: int = 5) -> np.ndarray:
    return np.zeros((slices, 32, 32), dtype=bool)


def test_blob_spanning_adjacent_slices_is_kept_and_isolated_small_blob_dropped():
    masks = empty_series()
    masks[1:4, 10:16, 10:16] = True  # 3 slices x 36 pixels = 108 voxels
    masks[4, 25:28, 25:28] = True  # 9 voxels, alone on the last slice
    cleaned = drop_small_components(masks, min_voxels=50)
    np.testing.assert_array_equal(cleaned[1:4], masks[1:4])
    assert not cleaned[4].any()


def test_blobs_touching_diagonally_across_slices_are_one_component():
    masks = empty_series()
    masks[1, 5:9, 5:9] = True  # 16 voxels
    masks[2, 9:13, 9:13] = True  # 16 voxels, touching the first only by a corner on the next slice
    np.testing.assert_array_equal(drop_small_components(masks, min_voxels=30), masks)
    assert not drop_small_components(masks, min_voxels=33).any()


def test_single_slice_is_untouched():
    masks = np.zeros((1, 32, 32), dtype=bool)
    masks[0, 3:5, 3:5] = True
    np.testing.assert_array_equal(drop_small_components(masks, min_voxels=1000), masks)


def test_zero_minimum_keeps_everything_and_input_is_not_modified():
    masks = empty_series()
    masks[2, 0, 0] = True
    before = masks.copy()
    np.testing.assert_array_equal(drop_small_components(masks, min_voxels=0), masks)
    drop_small_components(masks, min_voxels=5)
    np.testing.assert_array_equal(masks, before)


@pytest.mark.parametrize(
    ("masks", "min_voxels", "message"), [(np.zeros((4, 4)), 1, "shape"), (empty_series(), -1, ">= 0")]
)
def test_bad_arguments_are_refused(masks, min_voxels, message):
    with pytest.raises(ValueError, match=message):
        drop_small_components(masks, min_voxels)


def test_clean_series_masks_scales_the_minimum_to_the_slice_grid_and_empties_to_none():
    # 128 x 128 slices: a quarter of the 256 x 256 grid, so 100 grid voxels are 25 slice pixels.
    blob_of_16 = np.zeros((128, 128), np.uint8)
    blob_of_16[10:14, 10:14] = 1
    blob_of_36 = np.zeros((128, 128), np.uint8)
    blob_of_36[50:56, 50:56] = 1
    masks = [blob_of_16, None, blob_of_36]

    cleaned = clean_series_masks(masks, min_voxels=100)

    assert cleaned[0] is None and cleaned[1] is None
    np.testing.assert_array_equal(cleaned[2], blob_of_36)
    assert cleaned[2].dtype == np.uint8


def test_clean_series_masks_leaves_single_slices_and_mixed_sizes_alone():
    small = np.zeros((64, 64), np.uint8)
    small[0, 0] = 1
    assert clean_series_masks([small], min_voxels=10_000)[0] is small
    other_size = np.zeros((32, 32), np.uint8)
    other_size[0, 0] = 1
    assert clean_series_masks([small, other_size], min_voxels=10_000) == [small, other_size]


def test_clean_series_masks_joins_no_blob_across_a_break():
    # 256 x 256 slices (the model grid): a tumor of 3 x 36 voxels, and on the next slice given a small blob that
    # overlaps it in projection.
    tumor = np.zeros((256, 256), np.uint8)
    tumor[100:106, 100:106] = 1
    blob = np.zeros((256, 256), np.uint8)
    blob[103:106, 103:106] = 1
    masks = [tumor, tumor, tumor, blob]

    joined = clean_series_masks(masks, min_voxels=50)
    apart = clean_series_masks(masks, min_voxels=50, breaks={2})  # slices missing between the third and the fourth

    np.testing.assert_array_equal(joined[3], blob)  # one component of 117 voxels with the tumor
    assert apart[3] is None  # 9 voxels on its own
    for kept in apart[:3]:
        np.testing.assert_array_equal(kept, tumor)


def test_slices_larger_than_the_model_grid_are_joined_on_it():
    # 1024 x 768 slices, centred on a 1024 x 1024 square before the resize: a cell of the 256 x 256 grid is 4 x 4
    # pixels. A tumor over three slices (3 x 80 cells) is kept; a blob of 4 cells alone on the last slice is
    # dropped; a speck of one pixel beside the tumor touches its cells and is kept with it.
    tumor = np.zeros((1024, 768), np.uint8)
    tumor[400:440, 300:330] = 1  # 10 x 10 cells
    beside = tumor.copy()
    beside[440, 330] = 1  # the cell below and to the right of the tumor's last one: 26-connected to it
    lone = np.zeros((1024, 768), np.uint8)
    lone[8:16, 9:15] = 1  # 2 x 2 cells
    masks = [tumor, beside, tumor, lone]

    cleaned = clean_series_masks(masks, min_voxels=50)

    assert cleaned[0] is tumor and cleaned[2] is tumor  # nothing dropped: the mask itself
    np.testing.assert_array_equal(cleaned[1], beside)
    assert cleaned[3] is None
    partly = clean_series_masks([tumor, tumor + lone, tumor], min_voxels=50)[1]
    np.testing.assert_array_equal(partly, tumor)
    assert partly.dtype == np.uint8


def test_the_clean_up_of_large_slices_holds_about_one_slice_in_memory():
    """Joined at their own size, 23 slices of 4096 x 4096 took 5 GiB (attack review 30): on the model grid the
    clean-up holds one slice's boolean copy and the grid's small volume."""
    masks = [np.zeros((2048, 2048), np.uint8) for _ in range(6)]
    for index, mask in enumerate(masks):
        mask[500:900, 500:900] = 1
        mask[50 + index * 200 : 60 + index * 200, 1800:1810] = 1  # a small piece of its own on each slice
    tracemalloc.start()
    try:
        cleaned = clean_series_masks(masks, min_voxels=1600)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert all(int(mask.sum()) == 400 * 400 for mask in cleaned)
    one_slice = 2048 * 2048
    assert peak < 6 * one_slice + len(masks) * one_slice  # the cleaned masks themselves, and a few working copies


def test_a_lone_slice_loses_its_small_pieces_counted_on_the_model_grid():
    # 512 x 512: four times the 256 x 256 grid, so 100 grid pixels are 400 here. Pieces of 441 and 256 pixels, and
    # two of 1 touching by a corner (one 8-connected piece of 2).
    mask = np.zeros((512, 512), np.uint8)
    mask[10:31, 10:31] = 1
    mask[100:116, 100:116] = 1
    mask[300, 300] = mask[301, 301] = 1

    kept = drop_small_pieces(mask, min_pixels=100)

    assert kept.dtype == np.uint8 and int(kept.sum()) == 441 and kept[10:31, 10:31].all()
    assert int(drop_small_pieces(mask, min_pixels=1).sum()) == 441 + 256  # 4 pixels here: the pair of 2 goes
    mask[302, 302] = mask[303, 303] = 1  # now a diagonal piece of 4
    assert int(drop_small_pieces(mask, min_pixels=1).sum()) == 441 + 256 + 4
    assert drop_small_pieces(mask, min_pixels=200) is None  # nothing left: no mask
    assert drop_small_pieces(mask, min_pixels=0) is mask and drop_small_pieces(None, 100) is None
    with pytest.raises(ValueError, match=">= 0"):
        drop_small_pieces(mask, -1)


def test_the_smallest_piece_counts_square_model_grid_cells_on_a_rectangular_slice() -> None:
    # A 512 x 256 slice is centred on a 512 x 512 square before the resize: one model-grid cell covers 2 x 2 pixels,
    # so 10 cells are 40 pixels (a stretch to 256 x 256 made them 2 x 1 pixels: 20).
    mask = np.zeros((512, 256), np.uint8)
    mask[10:16, 10:16] = 1  # 36 pixels
    mask[100:108, 100:105] = 1  # 40 pixels

    kept = drop_small_pieces(mask, 10)

    assert kept is not None and np.count_nonzero(kept) == 40 and not kept[10:16, 10:16].any()


def test_sizes_are_counted_on_the_grid_the_models_saw_a_slice_of_tall_pixels_at() -> None:
    # 192 rows of pixels 1.33 times as tall as wide, seen by the models at 256 x 256 (app.dicom.square_pixels): each
    # stored pixel is 1.33 cells of their grid, so 200 cells are 150 stored pixels, not 200.
    mask = np.zeros((192, 256), np.uint8)
    mask[10:22, 10:24] = 1  # 168 stored pixels: 224 cells

    assert drop_small_pieces(mask, 200) is None  # counted as if the models saw 192 x 256
    np.testing.assert_array_equal(drop_small_pieces(mask, 200, seen=(256, 256)), mask)
    # The series clean-up alike: a blob of 168 stored pixels on each of two slices is 448 cells.
    assert clean_series_masks([mask, mask], min_voxels=400) == [None, None]
    kept = clean_series_masks([mask, mask], min_voxels=400, seen=(256, 256))
    assert all(np.array_equal(item, mask) for item in kept)


def test_slices_larger_than_the_grid_are_mapped_on_it_as_the_models_saw_them() -> None:
    # 512 x 512 stored pixels half as tall as wide, seen at 256 x 512: 128 x 256 cells of the grid, each 4 stored rows
    # by 2 columns. A blob of 40 x 40 stored pixels is 10 x 20 = 200 cells (read as square, 20 x 20 = 400).
    mask = np.zeros((512, 512), np.uint8)
    mask[100:140, 100:140] = 1

    assert all(np.array_equal(item, mask) for item in clean_series_masks([mask, mask], min_voxels=600))
    assert clean_series_masks([mask, mask], min_voxels=600, seen=(256, 512)) == [None, None]  # 400 cells
    assert all(np.array_equal(item, mask) for item in clean_series_masks([mask, mask], 400, seen=(256, 512)))
