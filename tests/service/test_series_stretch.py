"""A raster series' deeper than 8-bit slices are stretched over the series (`app.uploads.prepare_series_uploads`),
as kaggle_3m stretched its volumes and as a DICOM series is stretched; a slice alone, over itself."""

from __future__ import annotations

import tracemalloc
from unittest.mock import patch

import numpy as np
import pytest

from app import uploads
from app.core.preprocessing import preprocess_slice
from app.errors import ServiceError
from app.imaging import read_image_header
from app.intensity_range import stretch_in_place, stretch_range
from app.memory_budget import mask_bytes
from app.uploads import (
    PreparedSlice,
    UploadLimits,
    plan_raster_uploads,
    prepare_series_uploads,
    prepare_uploads,
    series_range_bytes,
)
from tests.api.service_client import png_bytes
from tests.service.test_imaging import tiff_bytes


def volume(slices: int = 4, side: int = 64, seed: int = 0) -> list[np.ndarray]:
    """uint16 HxW slices of one volume whose brightness differs from slice to slice (its ends darker)."""
    rng = np.random.default_rng(seed)
    peaks = np.linspace(1500, 4000, slices)
    return [np.rint(rng.uniform(0, peak, (side, side))).astype(np.uint16) for peak in peaks]


def over_the_volume(arrays: list[np.ndarray]) -> list[np.ndarray]:
    """The model inputs of `arrays` stretched together, as `normalise_volume` stretches a DICOM series."""
    values = [array.astype(np.float64) for array in arrays]
    low, high = stretch_range(values)
    return [preprocess_slice(stretch_in_place(item, low, high)) for item in values]


def model_inputs(prepared: list[PreparedSlice | ServiceError]) -> list[np.ndarray]:
    assert all(isinstance(item, PreparedSlice) for item in prepared), prepared
    return [item.model_input for item in prepared]


def assert_inputs_equal(actual: list[np.ndarray], expected: list[np.ndarray]) -> None:
    assert len(actual) == len(expected)
    for got, want in zip(actual, expected, strict=True):
        np.testing.assert_array_equal(got, want)


def test_the_16_bit_slices_of_a_series_are_stretched_over_the_series_as_their_8_bit_export_reads() -> None:
    slices = volume()
    top = max(int(item.max()) for item in slices)
    eight_bit = [np.rint(item * (255 / top)).astype(np.uint8) for item in slices]  # min 0: the volume's export

    prepared = prepare_series_uploads([png_bytes(item) for item in slices], UploadLimits())

    series = model_inputs(prepared)
    assert_inputs_equal(series, [preprocess_slice(item) for item in eight_bit])
    # Each slice alone is still stretched over itself: the darkest (peak 1500 of 4000) comes out 2.7 times brighter.
    alone = model_inputs(prepare_uploads([png_bytes(item) for item in slices], UploadLimits()))
    assert alone[0].mean() > 2.5 * series[0].mean()
    np.testing.assert_array_equal(alone[-1], series[-1])  # the brightest slice's range is the series'


def test_a_series_with_a_hot_pixel_gets_the_dicom_series_outlier_guards() -> None:
    slices = volume()
    slices[1][5, 5] = 65535  # one hot pixel: the rest would be squeezed into a few grey levels
    slices[2][7, 7] = 9000  # a few bright pixels alone above the rest

    prepared = prepare_series_uploads([tiff_bytes(item) for item in slices], UploadLimits())

    assert_inputs_equal(model_inputs(prepared), over_the_volume(slices))
    low, high = stretch_range([item.astype(np.float64) for item in slices])
    assert high < 9000  # the guards applied


def test_colour_slices_get_one_series_range_per_channel() -> None:
    rng = np.random.default_rng(1)
    slices = [
        np.stack([rng.integers(0, peak * scale, (48, 48)) for scale in (1, 3, 7)], axis=-1).astype(np.uint16)
        for peak in (300, 500, 900)
    ]
    expected = [np.empty((48, 48, 3), np.uint8) for _ in slices]
    for channel in range(3):
        values = [item[:, :, channel].astype(np.float64) for item in slices]
        low, high = stretch_range(values)
        for target, item in zip(expected, values, strict=True):
            target[:, :, channel] = stretch_in_place(item, low, high)

    prepared = prepare_series_uploads([png_bytes(item) for item in slices], UploadLimits())

    assert_inputs_equal(model_inputs(prepared), [preprocess_slice(item) for item in expected])


def test_8_bit_slices_of_a_mixed_series_stay_as_they_are_and_the_deep_ones_share_their_own_range() -> None:
    deep = volume(3)
    eight_bit = np.random.default_rng(2).integers(0, 200, (64, 64), dtype=np.uint8)
    files = [png_bytes(deep[0]), png_bytes(eight_bit), png_bytes(deep[1]), png_bytes(deep[2])]

    inputs = model_inputs(prepare_series_uploads(files, UploadLimits()))

    np.testing.assert_array_equal(inputs[1], preprocess_slice(eight_bit))  # /255, as training read its slices
    assert_inputs_equal([inputs[0], inputs[2], inputs[3]], over_the_volume(deep))


def test_a_deep_file_that_does_not_decode_yields_its_error_and_takes_no_part_in_the_range() -> None:
    slices = volume(3)
    broken = png_bytes(slices[2] + 1)
    broken = broken[: len(broken) // 2]  # its header reads; its pixels do not
    files = [png_bytes(slices[0]), broken, png_bytes(slices[1]), b"not an image"]

    prepared = prepare_series_uploads(files, UploadLimits())

    assert [type(item).__name__ for item in prepared] == [
        "PreparedSlice",
        "UndecodableImageError",
        "PreparedSlice",
        "UnsupportedMediaTypeError",
    ]
    assert_inputs_equal([prepared[0].model_input, prepared[2].model_input], over_the_volume(slices[:2]))


def test_a_series_without_outliers_decodes_each_deep_file_twice_and_each_8_bit_file_once() -> None:
    files = [png_bytes(item) for item in volume(3)] + [png_bytes(np.zeros((64, 64), np.uint8))]
    decode = uploads.decode_samples

    with patch.object(uploads, "decode_samples", side_effect=decode) as counted:
        prepare_series_uploads(files, UploadLimits())

    assert counted.call_count == 2 * 3 + 1


def test_the_series_plan_counts_the_range_samples_and_holds_what_decoding_holds() -> None:
    """The plan's cost is the budget's only guard: the series' range (its percentile samples, and a decoding pass for
    each outlier rule) must stay within it. A cold pixel, a hot one and one alone far above the rest bring every
    pass into play: five decodings of each file."""
    slices = [item.astype(np.int32) + 5000 for item in volume(6, 512)]
    slices[5][1, 1] = 0  # below the floor
    slices[0][0, 0] = 65535  # above the ceiling
    slices[3][9, 9] = 20000  # alone above half the range
    files = [tiff_bytes(item.astype(np.float32)) for item in slices]  # float32: the largest working copies
    headers = [read_image_header(data) for data in files]
    plan = plan_raster_uploads(files, UploadLimits(), series=True)
    assert plan.cost_bytes - plan_raster_uploads(files, UploadLimits()).cost_bytes == series_range_bytes(headers) > 0

    decode = uploads.decode_samples
    tracemalloc.start()
    try:
        with patch.object(uploads, "decode_samples", side_effect=decode) as counted:
            prepared = prepare_series_uploads(files, UploadLimits())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert counted.call_count == 5 * len(files)
    assert_inputs_equal(model_inputs(prepared), over_the_volume(slices))
    low, high = stretch_range([item.astype(np.float64) for item in slices])
    assert low >= 5000 and high < 10000  # every outlier saturates
    decoding = plan.cost_bytes - mask_bytes([512 * 512] * len(files))  # the masks come later
    assert peak < decoding, (peak, decoding)


@pytest.mark.parametrize("series", [False, True])
def test_a_single_16_bit_slice_is_stretched_over_itself_series_or_not(series: bool) -> None:
    (item,) = volume(1)
    prepare = prepare_series_uploads if series else prepare_uploads

    (prepared,) = model_inputs(prepare([png_bytes(item)], UploadLimits()))

    np.testing.assert_array_equal(prepared, over_the_volume([item])[0])
