"""Property tests: the RLE encoder against independent decoders, and the image decoder on hostile bytes.

The decoder's contract: whatever the bytes, `decode_image` returns a uint8 HxW or HxWx3 array or raises an
`app.errors.ServiceError` (which the API answers with a 4xx); any other exception would be a 500.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from pycocotools import mask as coco_mask

from app.errors import ServiceError
from app.imaging import decode_image
from app.masks import encode_rle
from tests.api.service_client import decode_rle
from tests.security import corpus

PROPERTY_SETTINGS = settings(
    max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
SMALL_MAX_PIXELS = 1 << 20  # keeps each example fast; the limit itself is tested in test_hostile_inputs
MAGIC_BYTES = [b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"]


def coco_counts_to_runs(counts: str) -> list[int]:
    """Decode COCO's compressed RLE string by hand (the LEB128-like scheme of `rleFrString` in maskApi.c)."""
    runs: list[int] = []
    position = 0
    while position < len(counts):
        value, shift, more = 0, 0, True
        while more:
            char = ord(counts[position]) - 48
            value |= (char & 0x1F) << (5 * shift)
            more = bool(char & 0x20)
            position += 1
            shift += 1
            if not more and char & 0x10:
                value |= -1 << (5 * shift)
        if len(runs) > 2:
            value += runs[-2]
        runs.append(value)
    return runs


def runs_to_mask(runs: list[int], height: int, width: int) -> np.ndarray:
    """Alternating runs of 0 and 1 (starting with 0) over the pixels in column-major order."""
    flat = np.repeat(np.arange(len(runs)) % 2, runs).astype(np.uint8)
    return flat.reshape((width, height)).T


masks = st.tuples(st.integers(1, 48), st.integers(1, 48)).flatmap(
    lambda shape: st.one_of(
        arrays(np.bool_, shape),
        arrays(np.uint8, shape, elements=st.sampled_from([0, 1, 255])),
        st.just(np.zeros(shape, np.uint8)),
        st.just(np.ones(shape, np.uint8)),
    )
)


@PROPERTY_SETTINGS
@given(mask=masks)
def test_encode_rle_round_trips_through_pycocotools(mask: np.ndarray):
    encoded = encode_rle(mask)
    height, width = mask.shape
    assert encoded["size"] == [height, width]
    assert isinstance(encoded["counts"], str) and encoded["counts"].isascii()
    expected = (mask > 0).astype(np.uint8)
    decoded = coco_mask.decode({"size": [height, width], "counts": encoded["counts"].encode("ascii")})
    np.testing.assert_array_equal(decoded, expected)
    np.testing.assert_array_equal(decode_rle(encoded), expected)
    assert int(coco_mask.area({"size": [height, width], "counts": encoded["counts"].encode("ascii")})) == int(
        expected.sum()
    )


@PROPERTY_SETTINGS
@given(mask=masks)
def test_encode_rle_matches_an_independent_decoder(mask: np.ndarray):
    encoded = encode_rle(mask)
    runs = coco_counts_to_runs(encoded["counts"])
    assert sum(runs) == mask.size and all(run >= 0 for run in runs)
    np.testing.assert_array_equal(runs_to_mask(runs, *mask.shape), (mask > 0).astype(np.uint8))


def assert_decodes_or_refuses(data: bytes) -> None:
    try:
        image = decode_image(data, max_pixels=SMALL_MAX_PIXELS)
    except ServiceError as error:
        assert error.code in {
            "empty_file",
            "undecodable_image",
            "invalid_image",
            "unsupported_media_type",
            "image_too_large",
        }, error.code
        assert error.message
        return
    # Anything else escaping would be a 500 in the service.
    assert image.dtype == np.uint8
    assert image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3), image.shape
    assert image.shape[0] * image.shape[1] <= SMALL_MAX_PIXELS


@PROPERTY_SETTINGS
@given(data=st.binary(max_size=4096))
def test_decode_image_on_random_bytes_raises_only_service_errors(data: bytes):
    assert_decodes_or_refuses(data)


@PROPERTY_SETTINGS
@given(magic=st.sampled_from(MAGIC_BYTES), rest=st.binary(max_size=4096))
def test_decode_image_on_random_bytes_after_magic_raises_only_service_errors(magic: bytes, rest: bytes):
    assert_decodes_or_refuses(magic + rest)


def _small_slice() -> np.ndarray:
    return corpus.tumor_slice()[::4, ::4]  # 64x64x3: real content, fast to decode


SEED_FILES = {
    "png": lambda: corpus.png_of(_small_slice()),
    "png-grey": lambda: corpus.png_of(np.ascontiguousarray(_small_slice()[:, :, 1])),
    "png-16bit": lambda: corpus.png_of(_small_slice()[:, :, 1].astype(np.uint16) * 257),
    "jpeg": lambda: corpus.pillow_file(_small_slice(), "JPEG", quality=90),
    "jpeg-progressive": lambda: corpus.pillow_file(_small_slice(), "JPEG", progressive=True),
    "tiff": lambda: corpus.tiff_of(_small_slice(), photometric="rgb"),
    "tiff-deflate": lambda: corpus.tiff_of(_small_slice(), photometric="rgb", compression="zlib"),
    "tiff-float": lambda: corpus.tiff_of(_small_slice()[:, :, 1].astype(np.float32)),
    "tiff-16bit-bigendian": lambda: corpus.tiff_of(_small_slice()[:, :, 1].astype(">u2")),
}


@st.composite
def mutated_files(draw: st.DrawFn) -> bytes:
    """A real small PNG/JPEG/TIFF with a few bytes overwritten, inserted or deleted, or cut short."""
    data = bytearray(SEED_FILES[draw(st.sampled_from(sorted(SEED_FILES)))]())
    for _ in range(draw(st.integers(1, 8))):
        position = draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(["overwrite", "insert", "delete", "truncate", "max"]))
        if action == "overwrite":
            data[position] = draw(st.integers(0, 255))
        elif action == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=16))
        elif action == "delete":
            del data[position : position + draw(st.integers(1, 16))]
        elif action == "truncate" and position > 0:
            del data[position:]
        else:
            data[position : position + 4] = b"\xff\xff\xff\x7f"  # a large length, count or offset
        if not data:
            break
    return bytes(data)


@PROPERTY_SETTINGS
@given(data=mutated_files())
def test_decode_image_on_mutated_real_files_raises_only_service_errors(data: bytes):
    assert_decodes_or_refuses(data)


@pytest.mark.parametrize("name", sorted(SEED_FILES))
def test_decode_image_reads_every_seed_file(name: str):
    image = decode_image(SEED_FILES[name]())
    assert image.shape[:2] == (64, 64)
