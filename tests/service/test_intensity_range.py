"""The stretch's range (`app.intensity_range`): min..max, unless a few pixels lie far above or below the rest."""

from __future__ import annotations

import numpy as np
import pytest

from app.imaging import stretch_to_uint8
from app.intensity_range import (
    FEW_PIXELS,
    ISOLATED_FACTOR,
    LOW_OUTLIER_MARGIN,
    LOW_REFERENCE_PERCENTILE,
    OUTLIER_FACTOR,
    stretch_range,
)
from tests.conftest import TUMOR_SERIES, read_slice


def volume() -> list[np.ndarray]:
    """The committed tumor series' FLAIR channel as 12-bit-like values (0..1020)."""
    return [read_slice(path)[:, :, 1].astype(np.float32) * 4.0 for path in TUMOR_SERIES]


def test_a_volume_without_outliers_keeps_its_minimum_and_maximum() -> None:
    frames = volume()

    assert stretch_range(frames) == (min(float(f.min()) for f in frames), max(float(f.max()) for f in frames))


def test_pixels_past_the_bound_are_left_out_of_the_range() -> None:
    frames = volume()
    clean_high = max(float(frame.max()) for frame in frames)
    frames[1][0, :3] = 65535.0

    assert stretch_range(frames) == (0.0, clean_high)


def test_a_bright_spot_on_a_black_image_is_no_outlier() -> None:
    """Nearly every pixel at the minimum: the percentile says nothing, and the spot keeps the range."""
    image = np.zeros((256, 256), np.float32)
    image[100:102, 100:102] = 800.0

    assert stretch_range([image]) == (0.0, 800.0)


def test_enough_pixels_just_inside_the_bound_keep_the_range() -> None:
    frames = volume()
    reference = float(np.percentile(np.concatenate([frame.ravel() for frame in frames]), 99.9))
    frames[0][0, :FEW_PIXELS] = OUTLIER_FACTOR * reference * 0.9

    assert stretch_range(frames)[1] == frames[0][0, 0]


@pytest.mark.parametrize("pixels", [1, FEW_PIXELS - 1])
def test_a_few_pixels_alone_far_above_the_rest_are_left_out_of_the_range(pixels: int) -> None:
    """A hot pixel at 2.5 times a series' maximum, inside the bound, doubled its tumor volume (attack review 28)."""
    frames = volume()
    clean_high = max(float(frame.max()) for frame in frames)
    frames[2][9, :pixels] = 2.5 * clean_high

    assert stretch_range(frames) == (0.0, clean_high)


def test_a_bright_pixel_not_far_above_the_rest_keeps_the_range() -> None:
    frames = volume()
    frames[2][9, 9] = 0.9 * ISOLATED_FACTOR * max(float(frame.max()) for frame in frames)

    assert stretch_range(frames)[1] == frames[2][9, 9]


def test_a_tiny_image_keeps_its_brightest_pixels() -> None:
    """Its few brightest pixels are its 99.9th percentile: nothing says they are alone."""
    image = np.arange(16, dtype=np.float32).reshape(4, 4) ** 3

    assert stretch_range([image]) == (0.0, 3375.0)


def test_a_16_bit_slice_with_a_hot_pixel_stretches_like_the_slice_without_it() -> None:
    clean = (read_slice(TUMOR_SERIES[0])[:, :, 1].astype(np.uint16)) * 4
    hot = clean.copy()
    hot[5, 5] = 65535

    stretched, expected = stretch_to_uint8(hot), stretch_to_uint8(clean)

    assert stretched[5, 5] == 255
    stretched[5, 5] = expected[5, 5]
    np.testing.assert_array_equal(stretched, expected)


def test_pixels_far_below_the_rest_are_left_out_of_the_range() -> None:
    """One cold pixel at -1000 under a 0..1020 series had set the stretch's floor: "no tumor" for a tumor series
    (attack review 28, finding 1)."""
    frames = volume()
    clean_high = max(float(frame.max()) for frame in frames)
    frames[0][7, 7] = -1000.0

    assert stretch_range(frames) == (0.0, clean_high)


def test_a_value_just_inside_the_low_bound_keeps_the_range() -> None:
    frames = volume()
    values = np.concatenate([frame.ravel() for frame in frames])
    bottom, reference = np.percentile(values, [LOW_REFERENCE_PERCENTILE, 99.9])
    frames[0][7, 7] = bottom - LOW_OUTLIER_MARGIN * (reference - bottom) * 0.9

    assert stretch_range(frames)[0] == frames[0][7, 7]
