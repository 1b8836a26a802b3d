"""Training-time augmentation of one slice and its mask (numpy + OpenCV, so it runs beside any Keras backend)."""

from __future__ import annotations

import cv2
import numpy as np

from app.core.preprocessing import FLAIR_CHANNEL


def augment_pair(
    image: np.ndarray,
    mask: np.ndarray,
    rng: np.random.Generator,
    max_rotation_degrees: float = 15.0,
    scale_range: tuple[float, float] = (0.9, 1.1),
    flair_substitution_probability: float = 0.15,
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
    angle = rng.uniform(-max_rotation_degrees, max_rotation_degrees)
    scale = rng.uniform(*scale_range)
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
    gain = rng.uniform(0.85, 1.15, size=3).astype(np.float32)
    offset = rng.uniform(-12.0, 12.0, size=3).astype(np.float32)
    image = np.clip(image.astype(np.float32) * gain + offset, 0, 255).astype(np.uint8)
    draw = rng.random()
    if draw < flair_substitution_probability:
        image = np.repeat(image[:, :, FLAIR_CHANNEL : FLAIR_CHANNEL + 1], 3, axis=2)
    elif draw < 2 * flair_substitution_probability:
        replaced = rng.choice([0, 2])
        image[:, :, replaced] = image[:, :, FLAIR_CHANNEL]
    return image, mask
