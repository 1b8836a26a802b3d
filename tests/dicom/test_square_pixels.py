"""Slices of non-square pixels reach the models at their true proportions, and their masks come back as stored."""

from __future__ import annotations

from dataclasses import replace

import cv2
import numpy as np
import pytest

from app.dicom.dicom_series import in_stored_orientation, model_inputs, non_square_pixels_note
from app.dicom.square_pixels import SquarePixels, square_pixels
from app.inference import SlicePrediction
from app.series.result import clean_series, single_slice_answers
from tests.dicom.builders import mr_series, to_bytes, tumor_channels
from tests.dicom.reading import read_series

TALL = 4 / 3  # rows 4/3 mm apart, columns 1 mm: each pixel 1.33 times as tall as wide


@pytest.mark.parametrize(
    ("shape", "spacing", "resampled"),
    [
        ((256, 256), (1.25, 0.9375), (256, 192)),  # a rectangular field of view on a square matrix
        ((256, 256), (0.9375, 1.25), (192, 256)),
        ((192, 256, 3), (TALL, 1.0), (256, 256)),  # channels do not count
        ((256, 256), (1.0, 1.005), (256, 256)),  # rounding in Pixel Spacing: square
        ((256, 256), None, (256, 256)),  # unknown: read as stored
        ((256, 256), (100.0, 1.0), (256, 256)),  # 100:1 would make a line of the slice: read as stored
    ],
)
def test_square_pixels_keeps_the_long_side_and_the_true_proportions(shape, spacing, resampled) -> None:
    assert square_pixels(shape, spacing) == SquarePixels((shape[0], shape[1]), resampled)


def test_undo_brings_a_mask_back_to_the_stored_grid_with_its_area_in_mm2() -> None:
    resampling = SquarePixels(stored=(192, 256), resampled=(256, 256))
    mask = np.zeros((256, 256), np.uint8)
    cv2.circle(mask, (128, 128), 60, 1, thickness=-1)

    back = resampling.undo(mask)

    assert back.shape == (192, 256) and back.dtype == np.uint8 and set(np.unique(back)) == {0, 1}
    # A stored pixel covers 4/3 of a resampled one: the same tumor in mm^2 within 1 %.
    assert np.count_nonzero(back) * TALL == pytest.approx(np.count_nonzero(mask), rel=0.01)


def squeezed(images: list[np.ndarray], rows: int) -> list[np.ndarray]:
    """The images as a scanner storing `rows` rows of taller pixels would: the same anatomy, fewer rows."""
    return [cv2.resize(image, (image.shape[1], rows), interpolation=cv2.INTER_AREA) for image in images]


def series(images: list[np.ndarray], pixel_spacing: list[float] | None, orientation: list[float] | None = None):
    datasets = mr_series(images)
    for dataset in datasets:
        if pixel_spacing is None:
            del dataset.PixelSpacing
        else:
            dataset.PixelSpacing = pixel_spacing
        if orientation is not None:
            dataset.ImageOrientationPatient = orientation
    return read_series([to_bytes(dataset) for dataset in datasets], max_pixels=1 << 20)


def test_the_models_see_a_slice_of_tall_pixels_as_they_learned_square_ones() -> None:
    """Interop review 35: pixels 1.33 times as tall as wide were read pixel for pixel, the anatomy squeezed to three
    quarters of its height on the model's grid."""
    square_batch, square_sizes = model_inputs(series(tumor_channels(), [1.0, 1.0]).inputs)
    stored = squeezed(tumor_channels(), rows=192)

    tall_batch, tall_sizes = model_inputs(series(stored, [TALL, 1.0]).inputs)
    as_stored_batch, _ = model_inputs(series(stored, None).inputs)  # what reading pixel for pixel shows

    assert tall_sizes == square_sizes == [(256, 256)] * 3
    assert np.abs(tall_batch - square_batch).mean() < 0.01
    assert np.abs(as_stored_batch - square_batch).mean() > 0.05


def test_tall_pixels_stored_transposed_are_resampled_along_the_right_axis() -> None:
    """Pixel Spacing gives rows, then columns, of the stored pixels: once the slice is turned, they are its columns,
    then its rows (otherwise a transposed slice would be stretched along the wrong axis)."""
    square_batch, _ = model_inputs(series(tumor_channels(), [1.0, 1.0]).inputs)
    stored = [np.ascontiguousarray(image.T) for image in squeezed(tumor_channels(), rows=192)]  # 256 rows x 192

    batch, sizes = model_inputs(series(stored, [1.0, TALL], orientation=[0.0, 1.0, 0.0, 1.0, 0.0, 0.0]).inputs)

    assert sizes == [(256, 256)] * 3
    assert np.abs(batch - square_batch).mean() < 0.01


def test_the_same_slices_stored_transposed_reach_the_models_as_the_same_pixels() -> None:
    """Interop review 59 F2: resampled before the turn, the same non-square slices stored as they are and stored
    transposed reached the models a little differently (resampling rows is not quite resampling columns), and their
    masks differed by a few pixels."""
    stored = squeezed(tumor_channels(), rows=192)
    transposed = [np.ascontiguousarray(image.T) for image in stored]
    as_stored = series(stored, [TALL, 1.0]).inputs
    turned = series(transposed, [1.0, TALL], orientation=[0.0, 1.0, 0.0, 1.0, 0.0, 0.0]).inputs

    (batch, sizes), (turned_batch, turned_sizes) = model_inputs(as_stored), model_inputs(turned)

    assert sizes == turned_sizes == [(256, 256)] * 3
    np.testing.assert_array_equal(batch, turned_batch)
    mask = np.zeros((256, 256), np.uint8)
    cv2.circle(mask, (120, 90), 37, 1, thickness=-1)
    (back,) = in_stored_orientation([SlicePrediction(0.9, True, mask)], as_stored[:1])
    (turned_back,) = in_stored_orientation([SlicePrediction(0.9, True, mask)], turned[:1])
    np.testing.assert_array_equal(turned_back.mask, back.mask.T)
    assert back.seen == (256, 256) and turned_back.seen == (256, 256)


def test_a_slice_seen_at_a_non_square_size_says_it_in_its_stored_pixel_order() -> None:
    """Review 67 F4: the clean-ups map the stored mask's rows onto the rows the models saw (`seen`): stored
    transposed, 256 rows of 1 mm by 128 columns of 1.5 mm, the models saw 192 rows by 256 columns once turned, which
    is 256 x 192 in the stored order."""
    stored = [cv2.resize(image, (256, 128), interpolation=cv2.INTER_AREA) for image in tumor_channels()]
    as_stored = series(stored, [1.5, 1.0]).inputs
    turned = series(
        [np.ascontiguousarray(image.T) for image in stored], [1.0, 1.5], orientation=[0.0, 1.0, 0.0, 1.0, 0.0, 0.0]
    ).inputs
    (_, sizes), (_, turned_sizes) = model_inputs(as_stored), model_inputs(turned)
    mask = np.zeros((192, 256), np.uint8)
    mask[50:90, 60:140] = 1

    (back,) = in_stored_orientation([SlicePrediction(0.9, True, mask)], as_stored[:1])
    (turned_back,) = in_stored_orientation([SlicePrediction(0.9, True, mask)], turned[:1])

    assert sizes == turned_sizes == [(192, 256)] * 3
    assert (back.seen, back.mask.shape) == ((192, 256), (128, 256))
    assert (turned_back.seen, turned_back.mask.shape) == ((256, 192), (256, 128))
    np.testing.assert_array_equal(turned_back.mask, back.mask.T)


def test_masks_come_back_on_the_stored_grid_of_a_transposed_slice_of_tall_pixels() -> None:
    stored = [np.ascontiguousarray(image.T) for image in squeezed(tumor_channels(), rows=192)]
    inputs = series(stored, [1.0, TALL], orientation=[0.0, 1.0, 0.0, 1.0, 0.0, 0.0]).inputs
    _, sizes = model_inputs(inputs)
    masks = [np.zeros(size, np.uint8) for size in sizes]
    for mask in masks:
        mask[40:80, 100:200] = 1  # 40 rows (y) by 100 columns (x) as the models see it

    answers = in_stored_orientation([SlicePrediction(0.9, True, mask) for mask in masks], inputs)

    for answer in answers:
        assert answer.seen == (256, 256)  # the clean-ups count sizes on the grid the models saw
        # Stored transposed: x runs down the rows (1 mm), y along the columns (4/3 mm): 100 rows by 30 columns.
        rows, columns = np.nonzero(answer.mask)
        assert answer.mask.shape == (256, 192)
        assert (rows.min(), rows.max() + 1) == (100, 200)
        assert (columns.min(), columns.max() + 1) == (30, 60)


def test_the_note_says_whether_the_pixels_were_resampled() -> None:
    square = series(tumor_channels(), [1.0, 1.0]).inputs
    tall = series(squeezed(tumor_channels(), rows=192), [TALL, 1.0]).inputs
    # 40 x 40 pixels of 1.9 x 0.95 mm (a 2:1 field of view): 20 columns once square, too few to read
    small = [cv2.resize(image, (40, 40), interpolation=cv2.INTER_AREA) for image in tumor_channels()]
    line = series(small, [1.9, 0.95]).inputs

    assert non_square_pixels_note([item.reference for item in square]) is None
    assert "resampled to square pixels" in non_square_pixels_note([item.reference for item in tall])
    assert "1.33 times as tall as wide" in non_square_pixels_note([item.reference for item in tall])
    assert "too far from square to resample" in non_square_pixels_note([item.reference for item in line])


def test_the_clean_ups_count_a_resampled_slice_on_the_grid_the_models_saw() -> None:
    """A piece of 168 stored pixels 1.33 times as tall as wide is 224 cells of the models' grid: a lone slice keeps it
    at the 200-cell minimum, and so does a series at 400 voxels for two such slices (counted as stored, it went)."""
    inputs = series(squeezed(tumor_channels(), rows=192)[:2], [TALL, 1.0]).inputs
    mask = np.zeros((192, 256), np.uint8)
    mask[10:22, 10:24] = 1
    predictions = in_stored_orientation([SlicePrediction(0.9, True, mask)] * 2, inputs)  # as stored already

    alone = single_slice_answers(predictions, min_probability=0.5, min_pixels=200)
    cleaned = clean_series(predictions, min_voxels=400)

    assert all(np.array_equal(answer.mask, mask) and answer.seen == (256, 256) for answer in alone + cleaned)
    assert single_slice_answers([replace(predictions[0], seen=None)], 0.5, 200)[0].mask is None
