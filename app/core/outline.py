"""Drawing a mask's outline on an RGB picture: the service's overlay and evaluation's plots draw it the same way."""

from __future__ import annotations

import cv2
import numpy as np


def draw_outline(canvas: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int], thickness: int = 1) -> None:
    """Draw the outer outline of `mask` (HxW, nonzero = inside) onto `canvas` (contiguous uint8 HxWx3), in place."""
    contours, _ = cv2.findContours((np.asarray(mask) > 0).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(canvas, contours, -1, colour, thickness)
