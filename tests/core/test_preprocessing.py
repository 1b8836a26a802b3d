"""`preprocess_slice` gives fixed, hand-computed numbers: a change to them for square slices (the only ones the
models are trained on) must change PREPROCESSING_ID."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from app.core.preprocessing import (
    CHANNEL_ORDER,
    FLAIR_CHANNEL,
    PREPROCESSING_ID,
    InvalidImageError,
    flair_only,
    model_grid_placement,
    preprocess_slice,
)


def test_preprocessing_id_is_the_one_the_committed_models_were_exported_for() -> None:
    assert PREPROCESSING_ID == "rgb8-resize256-area-scale1/255-v1"


def test_flair_is_the_middle_channel() -> None:
    assert CHANNEL_ORDER == ("pre-contrast", "FLAIR", "post-contrast")
    assert FLAIR_CHANNEL == 1


def test_a_256_slice_is_only_scaled_to_0_1() -> None:
    image = np.zeros((256, 256, 3), np.uint8)
    image[0, 0] = (0, 51, 255)

    result = preprocess_slice(image)

    assert result.dtype == np.float32 and result.shape == (256, 256, 3)
    np.testing.assert_allclose(result[0, 0], [0.0, 0.2, 1.0], rtol=1e-6)
    assert not result[1:].any()


def test_a_grey_slice_is_flair_in_all_three_channels() -> None:
    result = preprocess_slice(np.full((256, 256), 102, np.uint8))

    np.testing.assert_allclose(result, np.full((256, 256, 3), 0.4, np.float32), rtol=1e-6)


def test_shrinking_averages_area() -> None:
    # Each 2x2 block is 0, 255, 255, 255: INTER_AREA to 256x256 gives their mean, 191.25, kept as uint8 191.
    image = np.full((512, 512, 3), 255, np.uint8)
    image[::2, ::2] = 0

    np.testing.assert_allclose(preprocess_slice(image), np.full((256, 256, 3), 191 / 255, np.float32), atol=1e-6)


def test_enlarging_interpolates_linearly() -> None:
    image = np.zeros((128, 128, 3), np.uint8)
    image[:, 64:] = 255

    row = preprocess_slice(image)[0, :, 0]

    assert row[0] == 0.0 and row[-1] == 1.0
    assert 0.0 < row[127] < 1.0 and 0.0 < row[128] < 1.0  # the step is blended, not copied
    assert np.all(np.diff(row) >= 0)


def test_alpha_is_dropped() -> None:
    image = np.zeros((256, 256, 4), np.uint8)
    image[..., 3] = 255

    assert not preprocess_slice(image).any()


def test_flair_only_copies_flair_into_every_channel() -> None:
    images = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 1, 3, 3)

    np.testing.assert_array_equal(flair_only(images), np.repeat(images[..., 1:2], 3, axis=-1))


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.zeros((4, 4, 2), np.uint8), r"^image must be HxW, HxWx1, HxWx3 or HxWx4; got shape \(4, 4, 2\)$"),
        (np.zeros((4, 4), np.uint16), r"^image must be uint8 after decoding; got dtype uint16$"),
        (np.zeros((0, 4), np.uint8), r"^image is 4x0 pixels; a brain MRI slice has at least 32 pixels on each side$"),
        (
            np.zeros((31, 256), np.uint8),
            r"^image is 256x31 pixels; a brain MRI slice has at least 32 pixels on each side$",
        ),
        (  # attack26 finding 6: answered 200, and the page showed a strip 0.2 px tall
            np.zeros((32, 60000), np.uint8),
            r"^image is 60000x32 pixels; a brain MRI slice's long side is at most 8 times its short side$",
        ),
        (
            np.zeros((257, 32), np.uint8),
            r"^image is 32x257 pixels; a brain MRI slice's long side is at most 8 times its short side$",
        ),
    ],
)
def test_preprocess_slice_refuses_what_is_no_8_bit_slice(image: np.ndarray, message: str) -> None:
    with pytest.raises(InvalidImageError, match=message):
        preprocess_slice(image)


def test_a_slice_eight_times_as_long_as_wide_is_still_a_slice() -> None:
    assert preprocess_slice(np.zeros((32, 256), np.uint8)).shape == (256, 256, 3)


def test_a_rectangular_slice_is_centred_on_a_square_of_background_not_stretched() -> None:
    # Interop review 35: a 256 x 208 matrix was stretched to 256 x 256, the anatomy wider than it is (-7.4 % volume).
    rng = np.random.default_rng(0)
    slice_ = rng.integers(1, 256, size=(256, 208, 3), dtype=np.uint8)
    square = np.zeros((256, 256, 3), np.uint8)
    square[:, 24:232] = slice_
    np.testing.assert_array_equal(preprocess_slice(slice_), preprocess_slice(square))
    tall = rng.integers(1, 256, size=(300, 100), dtype=np.uint8)
    assert model_grid_placement(300, 100) == (0, 85, 256, 85)  # 300 -> 256 rows, 100 -> 85 columns, centred
    model_input = preprocess_slice(tall)
    assert not model_input[:, :85].any() and not model_input[:, 170:].any()
    shrunk = cv2.resize(tall, (85, 256), interpolation=cv2.INTER_AREA).astype(np.float32) / 255
    np.testing.assert_allclose(model_input[:, 85:170, 1], shrunk, atol=1e-6)
