"""Mask encodings returned to clients: COCO compressed RLE, 8-bit PNG, bounding box and area.

RLE follows the COCO convention exactly (it is produced by `pycocotools.mask.encode`): runs over the pixels in
column-major (Fortran) order, starting with a run of zeros (possibly of length 0), compressed into the ASCII
`counts` string. `pycocotools.mask.decode({"size": [H, W], "counts": counts})` gives the mask back.
"""

from __future__ import annotations

import base64

import cv2
import numpy as np
from pycocotools import mask as coco_mask


def as_binary(mask: np.ndarray) -> np.ndarray:
    """Validate a 2-D mask and return it as uint8 0/1."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (HxW); got shape {mask.shape}")
    return (mask > 0).astype(np.uint8)


def encode_rle(mask: np.ndarray) -> dict:
    """COCO compressed RLE of a 2-D mask: `{"size": [H, W], "counts": str}`."""
    binary = np.asfortranarray(as_binary(mask))
    encoded = coco_mask.encode(binary)
    return {"size": [int(value) for value in encoded["size"]], "counts": encoded["counts"].decode("ascii")}


def encode_png(mask: np.ndarray) -> str:
    """Base64 of an 8-bit single-channel PNG with 0 for background and 255 for tumor."""
    return base64.b64encode(png_bytes(mask)).decode("ascii")


def png_bytes(mask: np.ndarray) -> bytes:
    """An 8-bit single-channel PNG of the mask, 0 for background and 255 for tumor."""
    ok, encoded = cv2.imencode(".png", as_binary(mask) * np.uint8(255))
    if not ok:
        raise ValueError(f"OpenCV could not encode a mask of shape {np.shape(mask)} as PNG")
    return encoded.tobytes()


def area(mask: np.ndarray) -> int:
    """Number of tumor pixels."""
    return int(np.count_nonzero(mask))


def bbox(mask: np.ndarray) -> list[int] | None:
    """Tightest `[x, y, width, height]` box around the tumor pixels (COCO order), or None for an empty mask."""
    rows = np.flatnonzero(np.any(mask, axis=1))
    columns = np.flatnonzero(np.any(mask, axis=0))
    if rows.size == 0:
        return None
    x, y = int(columns[0]), int(rows[0])
    return [x, y, int(columns[-1]) - x + 1, int(rows[-1]) - y + 1]
