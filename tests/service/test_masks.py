"""`app.masks`: COCO RLE checked against pycocotools' own encoder and decoder, PNG, bbox, area."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as coco_mask

from app import masks
from tests.api.service_client import decode_rle


def random_mask(height: int, width: int, seed: int, density: float = 0.3) -> np.ndarray:
    return (np.random.default_rng(seed).random((height, width)) < density).astype(np.uint8)


def column_major_runs(mask: np.ndarray) -> list[int]:
    """Uncompressed COCO counts written out by hand: runs over the column-major pixels, starting with zeros."""
    pixels = mask.flatten(order="F")
    runs, current, length = [], 0, 0
    for pixel in pixels:
        if pixel == current:
            length += 1
        else:
            runs.append(length)
            current, length = pixel, 1
    runs.append(length)
    return runs


EDGE_CASES = {
    "all_zeros": np.zeros((8, 8), np.uint8),
    "all_ones": np.ones((8, 8), np.uint8),
    "one_by_one_zero": np.zeros((1, 1), np.uint8),
    "one_by_one_one": np.ones((1, 1), np.uint8),
    "wide": random_mask(3, 17, seed=1),
    "tall": random_mask(19, 2, seed=2),
    "first_pixel_set": np.pad(np.ones((1, 1), np.uint8), ((0, 4), (0, 6))),
    "last_pixel_set": np.pad(np.ones((1, 1), np.uint8), ((4, 0), (6, 0))),
}
RANDOM_CASES = {f"random_{h}x{w}_{seed}": random_mask(h, w, seed) for seed, (h, w) in enumerate([(64, 64), (37, 91)])}
CASES = EDGE_CASES | RANDOM_CASES


@pytest.mark.parametrize("name", sorted(CASES))
def test_encode_rle_decodes_with_pycocotools(name: str) -> None:
    mask = CASES[name]

    rle = masks.encode_rle(mask)

    assert rle["size"] == [mask.shape[0], mask.shape[1]]
    assert isinstance(rle["counts"], str)
    decoded = coco_mask.decode({"size": rle["size"], "counts": rle["counts"].encode("ascii")})
    np.testing.assert_array_equal(decoded, mask)


@pytest.mark.parametrize("name", sorted(CASES))
def test_encode_rle_follows_coco_convention(name: str) -> None:
    mask = CASES[name]
    height, width = mask.shape
    # pycocotools compresses our hand-written column-major, zeros-first runs: the counts must be identical.
    expected = coco_mask.frPyObjects({"size": [height, width], "counts": column_major_runs(mask)}, height, width)

    assert masks.encode_rle(mask)["counts"] == expected["counts"].decode("ascii")


@pytest.mark.parametrize("name", sorted(CASES))
def test_decode_rle_inverts_encode_rle(name: str) -> None:
    mask = CASES[name]

    np.testing.assert_array_equal(decode_rle(masks.encode_rle(mask)), mask)


def test_encode_rle_of_all_ones_starts_with_empty_zero_run() -> None:
    rle = masks.encode_rle(np.ones((2, 3), np.uint8))

    assert coco_mask.decode({"size": [2, 3], "counts": rle["counts"].encode()}).sum() == 6
    uncompressed = coco_mask.frPyObjects({"size": [2, 3], "counts": [0, 6]}, 2, 3)
    assert rle["counts"] == uncompressed["counts"].decode("ascii")


def test_encode_rle_binarises_any_nonzero_value() -> None:
    grey = np.array([[0, 255], [7, 0]], np.uint8)
    flags = np.array([[False, True], [True, False]])

    assert masks.encode_rle(grey) == masks.encode_rle(flags) == masks.encode_rle(grey > 0)


def test_encode_rle_rejects_three_dimensional_mask() -> None:
    with pytest.raises(ValueError, match=r"mask must be 2-D \(HxW\); got shape \(4, 4, 1\)"):
        masks.encode_rle(np.zeros((4, 4, 1), np.uint8))


@pytest.mark.parametrize("name", ["wide", "all_ones", "one_by_one_zero", "random_37x91_1"])
def test_encode_png_is_8_bit_0_255_of_same_shape(name: str) -> None:
    mask = CASES[name]

    image = Image.open(io.BytesIO(masks.png_bytes(mask)))

    assert image.format == "PNG"
    assert image.mode == "L"
    np.testing.assert_array_equal(np.asarray(image), mask * 255)
    assert masks.encode_png(mask) == base64.b64encode(masks.png_bytes(mask)).decode("ascii")


def test_bbox_is_x_y_width_height() -> None:
    mask = np.zeros((10, 20), np.uint8)
    mask[2:5, 7:15] = 1  # rows 2..4, columns 7..14

    assert masks.bbox(mask) == [7, 2, 8, 3]
    assert masks.area(mask) == 24


def test_bbox_of_single_pixel() -> None:
    mask = np.zeros((5, 9), np.uint8)
    mask[4, 8] = 1

    assert masks.bbox(mask) == [8, 4, 1, 1]
    assert masks.area(mask) == 1


def test_bbox_spans_separate_regions() -> None:
    mask = np.zeros((12, 12), np.uint8)
    mask[1, 10] = 1
    mask[9, 2] = 1

    assert masks.bbox(mask) == [2, 1, 9, 9]
    assert masks.area(mask) == 2


def test_bbox_of_empty_mask_is_none() -> None:
    assert masks.bbox(np.zeros((4, 6), np.uint8)) is None
    assert masks.area(np.zeros((4, 6), np.uint8)) == 0


@pytest.mark.parametrize("name", sorted(RANDOM_CASES))
def test_bbox_agrees_with_pycocotools(name: str) -> None:
    mask = CASES[name]
    rle = coco_mask.encode(np.asfortranarray(mask))

    assert masks.bbox(mask) == [int(value) for value in coco_mask.toBbox(rle)]
    assert masks.area(mask) == int(coco_mask.area(rle))
