"""Training-time augmentation of one slice and its mask (numpy + OpenCV, so it runs beside any Keras backend)."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from app.core.preprocessing import FLAIR_CHANNEL


@dataclass(frozen=True)
class Augmentation:
    """How far `augment_pair` may move a slice away from the one the scanner gave."""

    max_rotation_degrees: float = 15.0
    scale_range: tuple[float, float] = (0.9, 1.1)
    gain_range: tuple[float, float] = (0.85, 1.15)
    max_offset: float = 12.0
    flair_substitution_probability: float = 0.15
    # Also per channel, after the above: a gamma curve, then (sometimes) blur or noise. Off in STANDARD.
    max_log_gamma: float = 0.0
    blur_probability: float = 0.0
    noise_probability: float = 0.0


STANDARD = Augmentation()
# Wider intensity changes, for a model that must hold on scanners and sites it never saw (the 5 institutions of the
# training data are few): contrast curves, softer or noisier images, a little more rotation and scale.
STRONG = Augmentation(
    max_rotation_degrees=20.0,
    scale_range=(0.85, 1.15),
    gain_range=(0.75, 1.25),
    max_offset=20.0,
    max_log_gamma=0.3,
    blur_probability=0.2,
    noise_probability=0.2,
)
AUGMENTATIONS = {"standard": STANDARD, "strong": STRONG}


def augment_pair(
    image: np.ndarray,
    mask: np.ndarray,
    rng: np.random.Generator,
    augmentation: Augmentation = STANDARD,
) -> tuple[np.ndarray, np.ndarray]:
    """Return a randomly flipped, rotated, scaled and intensity-jittered copy of `image` (uint8 HxWx3) and `mask`.

    With `flair_substitution_probability` the pre- or post-contrast channel (or both) is replaced by FLAIR. The
    dataset does exactly this for patients missing a sequence, and a PACS may send FLAIR alone; training on it keeps
    the model usable then.
    """
    image = image.copy()
    mask = mask.copy()
    if rng.random() < 0.5:
        image, mask = image[:, ::-1], mask[:, ::-1]
    height, width = mask.shape
    angle = rng.uniform(-augmentation.max_rotation_degrees, augmentation.max_rotation_degrees)
    scale = rng.uniform(*augmentation.scale_range)
    transform = cv2.getRotationMatrix2D((width / 2, height / 2), angle, scale)
    image = cv2.warpAffine(
        np.ascontiguousarray(image),
        transform,
        (width, height),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    )
    mask = cv2.warpAffine(
        np.ascontiguousarray(mask),
        transform,
        (width, height),
        flags=cv2.INTER_NEAREST,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    )
    # Contrast and brightness per channel: sequences differ between scanners and sites.
    gain = rng.uniform(*augmentation.gain_range, size=3).astype(np.float32)
    offset = rng.uniform(-augmentation.max_offset, augmentation.max_offset, size=3).astype(np.float32)
    image = np.clip(image.astype(np.float32) * gain + offset, 0, 255).astype(np.uint8)
    if augmentation.max_log_gamma > 0:
        image = scanner_variation(image, rng, augmentation)
    draw = rng.random()
    if draw < augmentation.flair_substitution_probability:
        image = np.repeat(image[:, :, FLAIR_CHANNEL : FLAIR_CHANNEL + 1], 3, axis=2)
    elif draw < 2 * augmentation.flair_substitution_probability:
        replaced = rng.choice([0, 2])
        image[:, :, replaced] = image[:, :, FLAIR_CHANNEL]
    return image, mask


def scanner_variation(image: np.ndarray, rng: np.random.Generator, settings: Augmentation) -> np.ndarray:
    """A gamma curve per channel, then sometimes a slight blur or noise (none where the slice is black)."""
    gamma = np.exp(rng.uniform(-settings.max_log_gamma, settings.max_log_gamma, size=3)).astype(np.float32)
    varied = 255.0 * (image.astype(np.float32) / 255.0) ** gamma
    draw = rng.random()
    if draw < settings.blur_probability:
        varied = cv2.GaussianBlur(varied, (0, 0), sigmaX=rng.uniform(0.5, 1.0))
    elif draw < settings.blur_probability + settings.noise_probability:
        varied = varied + rng.normal(0.0, rng.uniform(2.0, 6.0), size=varied.shape).astype(np.float32)
        varied[image == 0] = 0
    return np.clip(varied, 0, 255).astype(np.uint8)
