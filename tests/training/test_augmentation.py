"""`training.augmentation.augment_pair`: whatever it does to the image, the mask follows exactly; STRONG varies more."""

from __future__ import annotations

import numpy as np
import pytest

from app.core.preprocessing import FLAIR_CHANNEL
from training.augmentation import STANDARD, STRONG, Augmentation, augment_pair


def l_shaped_object(size: int = 96) -> tuple[np.ndarray, np.ndarray]:
    """An asymmetric bright object on black, in every channel, and its mask: a flip or turn shows in both."""
    mask = np.zeros((size, size), np.uint8)
    mask[20:70, 20:35] = 1
    mask[55:70, 20:60] = 1
    image = np.repeat((mask * 200)[:, :, None], 3, axis=2).astype(np.uint8)
    return image, mask


def iou(first: np.ndarray, second: np.ndarray) -> float:
    return float(np.logical_and(first, second).sum() / np.logical_or(first, second).sum())


@pytest.mark.parametrize("augmentation", [STANDARD, STRONG], ids=["standard", "strong"])
@pytest.mark.parametrize("seed", range(12))
def test_augment_pair_keeps_image_and_mask_aligned(seed: int, augmentation: Augmentation) -> None:
    image, mask = l_shaped_object()

    augmented_image, augmented_mask = augment_pair(image, mask, np.random.default_rng(seed), augmentation)

    assert augmented_image.shape == image.shape and augmented_image.dtype == np.uint8
    assert augmented_mask.shape == mask.shape and set(np.unique(augmented_mask)) <= {0, 1}
    # Background stays dark (brightness offset, noise), the object bright (at least 200 * 0.85 - 12, or with STRONG's
    # wider gain and gamma about 100): the object's pixels in the image are where the mask is, up to interpolation at
    # the border (linear for the image, nearest for masks) and STRONG's slight blur.
    bright = augmented_image[:, :, FLAIR_CHANNEL] > 100
    assert iou(bright, augmented_mask > 0) > 0.9


def test_augment_pair_moves_the_object_for_some_draws() -> None:
    image, mask = l_shaped_object()
    moved = [iou(augment_pair(image, mask, np.random.default_rng(seed))[1] > 0, mask > 0) < 0.8 for seed in range(12)]
    assert any(moved)  # flips and turns happen, so the alignment test above is not about an unchanged mask


def test_augment_pair_leaves_its_inputs_alone() -> None:
    image, mask = l_shaped_object()
    image_before, mask_before = image.copy(), mask.copy()

    augment_pair(image, mask, np.random.default_rng(0))

    np.testing.assert_array_equal(image, image_before)
    np.testing.assert_array_equal(mask, mask_before)


def test_strong_augmentation_varies_contrast_more_than_standard() -> None:
    ramp = np.tile(np.linspace(0, 255, 96, dtype=np.float32), (96, 1))
    image = np.repeat(ramp[:, :, None], 3, axis=2).astype(np.uint8)
    mask = np.zeros((96, 96), np.uint8)

    def spread(augmentation: Augmentation) -> float:
        # Mid-grey pixels at the centre (untouched by turns and flips) after many draws: how far contrast moves them.
        return float(
            np.std(
                [
                    augment_pair(image, mask, np.random.default_rng(seed), augmentation)[0][44:52, 44:52].mean()
                    for seed in range(60)
                ]
            )
        )

    assert spread(STRONG) > 1.3 * spread(STANDARD)
