"""Drawing the predicted tumor outline over the slice, for people to look at (not for measurement)."""

from __future__ import annotations

import cv2
import numpy as np

from app.core.outline import draw_outline

OUTLINE_RGB = (0, 255, 0)  # green: the kaggle_3m composite is mostly grey-magenta, so green stands out
OVERLAY_BYTES_PER_PIXEL = 13
"""What drawing and encoding an overlay holds per pixel of the slice, beyond its decoding: the RGB canvas and its
BGR copy for OpenCV (3 + 3), the encoded PNG and its copy as bytes (up to 3 + 3: noise does not compress), the mask
(1)."""


def outlined_copy(image: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """Return an RGB copy of `image` (uint8 HxW or HxWx3) with the outline of `mask` (same HxW) drawn on it.

    A grey image is shown as grey; a 3-channel kaggle_3m composite is shown as its RGB rendering. With no mask, or
    an empty one, the image comes back without an outline. The line is about 1 px per 256 px of the shorter side.
    """
    canvas = np.repeat(image[:, :, None], 3, axis=2) if image.ndim == 2 else image[:, :, :3].copy()
    canvas = np.ascontiguousarray(canvas)
    if mask is None or not np.any(mask):
        return canvas
    if mask.shape != canvas.shape[:2]:
        raise ValueError(f"mask shape {mask.shape} must equal the image's height and width {canvas.shape[:2]}")
    draw_outline(canvas, mask, OUTLINE_RGB, thickness=max(1, round(min(canvas.shape[:2]) / 256)))
    return canvas


def render_overlay_png(image: np.ndarray, mask: np.ndarray | None) -> bytes:
    """PNG bytes of `outlined_copy(image, mask)`."""
    canvas = outlined_copy(image, mask)
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError(f"OpenCV could not encode an overlay of shape {canvas.shape} as PNG")
    return encoded.tobytes()
