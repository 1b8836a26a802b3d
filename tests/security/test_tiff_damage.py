"""Attack review 42: a TIFF whose compressed strips are damaged or cut short is refused, and one set of stored pixels
is read one way whatever the compression (OpenCV's libtiff, the fallback before, decoded LZW and damaged strips with
black rows, turned the page by its Orientation tag and left 16-bit MinIsWhite negative)."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
import tifffile

from app.errors import UndecodableImageError
from app.imaging import decode_image
from tests.security import corpus

PILLOW_COMPRESSIONS = ["tiff_lzw", "packbits", "tiff_adobe_deflate"]


def with_strips_cut(data: bytes, strips: tuple[int, ...], fraction: int = 8) -> bytes:
    """`data` with the StripByteCounts of `strips` cut to 1 / `fraction`: as if the writer had stopped there."""
    cut = bytearray(data)
    with tifffile.TiffFile(io.BytesIO(data)) as tiff:
        tag = tiff.pages.first.tags["StripByteCounts"]
        counts = list(tiff.pages.first.databytecounts)
    layout = {3: "<H", 4: "<I"}[int(tag.dtype)]
    for strip in strips:
        struct.pack_into(layout, cut, tag.valueoffset + strip * struct.calcsize(layout), counts[strip] // fraction)
    return bytes(cut)


@pytest.mark.parametrize("compression", PILLOW_COMPRESSIONS)
def test_strips_cut_short_are_refused(compression: str):
    data = corpus.pillow_file(corpus.tumor_slice(), "TIFF", compression=compression, rowsperstrip=85)
    assert np.array_equal(decode_image(data), corpus.tumor_slice())

    with pytest.raises(UndecodableImageError, match="image data is damaged or cut short"):
        decode_image(with_strips_cut(data, (1, 2)))


def test_damaged_deflate_data_is_refused():
    """Deflate data carries a checksum: every damaged copy is refused (177 of 300 were answered, one "no tumor")."""
    data = corpus.pillow_file(corpus.tumor_slice(), "TIFF", compression="tiff_adobe_deflate")
    with tifffile.TiffFile(io.BytesIO(data)) as tiff:
        offset, count = tiff.pages.first.dataoffsets[0], tiff.pages.first.databytecounts[0]
    rng = np.random.default_rng(42)
    for _ in range(20):
        damaged = bytearray(data)
        for position in rng.integers(offset + 2, offset + count - 4, 4):
            damaged[position] ^= 0x5A
        with pytest.raises(UndecodableImageError, match="TIFF file cannot be decoded"):
            decode_image(bytes(damaged))


@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
def test_lzw_min_is_white_reads_as_the_uncompressed_file(dtype: type):
    flair = corpus.tumor_slice()[:, :, 1].astype(dtype) * 16
    negative = (flair.max() - flair).astype(dtype)
    plain = corpus.tiff_of(negative, photometric="miniswhite")
    lzw = corpus.tiff_of(negative, photometric="miniswhite", compression="lzw")

    assert np.array_equal(decode_image(lzw), decode_image(plain))
    assert np.array_equal(decode_image(plain), decode_image(corpus.tiff_of(flair)))


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_orientation_does_not_turn_an_lzw_slice(orientation: int):
    """The page draws a TIFF as stored and the masks are placed over it: no decoder may turn it."""
    image = corpus.tumor_slice()
    turned = corpus.pillow_file(image, "TIFF", compression="tiff_lzw", tiffinfo={274: orientation})

    assert np.array_equal(decode_image(turned), image)


@pytest.mark.parametrize("compression", ["zstd", "webp", "jpeg2000"])
def test_compressions_outside_the_list_are_refused_before_decoding(compression: str):
    data = corpus.tiff_of(corpus.tumor_slice(), photometric="rgb", compression=compression)

    with pytest.raises(UndecodableImageError, match=r"\(Compression \d+\), which this service does not read"):
        decode_image(data)
