"""Attack review 59 F2, F4, F8: a PNG of 8 bits or fewer is checked whole before Pillow decodes it, as a 16-bit one is
before libpng. Pillow filled the rows a compressed stream cut short does not hold with black and said nothing (the
tumor slice cut at its tumor was answered "no tumor"), and read an animated PNG's image data where browsers show its
frame."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from app.errors import InvalidSliceError, UndecodableImageError
from app.imaging import decode_image
from app.png_data import ADAM7_PASSES, SIGNATURE
from tests.security.corpus import png_chunk, tumor_slice


def png_file(header: bytes, rows: bytes, before_image: bytes = b"", after_image: bytes = b"") -> bytes:
    return (
        SIGNATURE
        + png_chunk(b"IHDR", header)
        + before_image
        + png_chunk(b"IDAT", zlib.compress(rows))
        + after_image
        + png_chunk(b"IEND", b"")
    )


def rgb_header(image: np.ndarray, interlace: int = 0) -> bytes:
    colour = 2 if image.ndim == 3 else 0
    return struct.pack(">IIBBBBB", image.shape[1], image.shape[0], 8, colour, 0, 0, interlace)


def unfiltered_rows(image: np.ndarray) -> bytes:
    return b"".join(b"\0" + row.tobytes() for row in image)


def test_a_stream_cut_short_is_refused_not_read_as_black_rows():
    """The stream holds the tumor slice's first 66 rows and ends properly: Pillow gave the rest black."""
    image = tumor_slice()
    whole = png_file(rgb_header(image), unfiltered_rows(image))
    assert np.array_equal(decode_image(whole), image)

    with pytest.raises(UndecodableImageError, match="its image data holds 50754 of the 196864 bytes"):
        decode_image(png_file(rgb_header(image), unfiltered_rows(image[:66])))


@pytest.mark.parametrize(
    "damage",
    ["no end chunk", "image data checksum", "bytes after the stream", "rows past the image"],
)
def test_other_damage_is_refused_as_for_a_16_bit_png(damage: str):
    """F8: these were answered with the pixels the file held; the 16-bit path refused them."""
    image = tumor_slice()[:32, :32]
    rows = unfiltered_rows(image)
    data = bytearray(png_file(rgb_header(image), rows))
    if damage == "no end chunk":
        data = data[:-12]
    elif damage == "image data checksum":
        data[-13] ^= 0xFF  # the IDAT chunk's last checksum byte
    elif damage == "bytes after the stream":
        data = bytearray(png_file(rgb_header(image), b"")[:33]) + png_chunk(b"IDAT", zlib.compress(rows) + b"junk")
        data += png_chunk(b"IEND", b"")
    else:
        data = bytearray(png_file(rgb_header(image), rows + rows[: 1 + 32 * 3]))

    with pytest.raises(UndecodableImageError, match="PNG file cannot be decoded"):
        decode_image(bytes(data))


@pytest.mark.parametrize(
    ("mode", "options"),
    [("P", {"bits": 1}), ("P", {"bits": 2}), ("P", {"bits": 4}), ("P", {}), ("1", {}), ("L", {}), ("LA", {})],
)
def test_every_bit_depth_and_colour_type_pillow_writes_is_read_as_pillow_reads_it(mode: str, options: dict):
    """The whole-file check counts the rows of sub-byte depths and palettes right: nothing legitimate is refused."""
    grey = (tumor_slice()[:, :, 1] // 64 * 64).astype(np.uint8)  # four levels: a palette of 2 bits holds them
    image = Image.fromarray(grey).convert(mode) if mode != "P" else Image.fromarray(grey).quantize(colors=4)
    buffer = io.BytesIO()
    image.save(buffer, "PNG", **options)

    decoded = decode_image(buffer.getvalue())

    expected = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB" if mode == "P" else "L"))
    assert np.array_equal(decoded, expected)


def test_an_interlaced_png_is_read():
    image = tumor_slice()[:, :, 1]
    rows = b""
    for first_column, first_row, column_step, row_step in ADAM7_PASSES:
        part = image[first_row::row_step, first_column::column_step]
        rows += b"".join(b"\0" + row.tobytes() for row in part) if part.size else b""

    assert np.array_equal(decode_image(png_file(rgb_header(image, interlace=1), rows)), image)


def frame_control(sequence: int, image: np.ndarray) -> bytes:
    return png_chunk(b"fcTL", struct.pack(">IIIIIHHBB", sequence, image.shape[1], image.shape[0], 0, 0, 1, 1, 0, 0))


def test_an_animated_png_whose_image_data_is_not_its_frame_is_refused():
    """F4: acTL said one frame, but with no fcTL before the image data that data is no frame: browsers showed the
    tumor (the fdAT frame), the models read the tumor-free image data."""
    tumor, tumor_free = tumor_slice(), tumor_slice()[::-1]
    animation = png_chunk(b"acTL", struct.pack(">II", 1, 0))
    frame = frame_control(0, tumor) + png_chunk(b"fdAT", struct.pack(">I", 1) + zlib.compress(unfiltered_rows(tumor)))
    data = png_file(rgb_header(tumor_free), unfiltered_rows(tumor_free), before_image=animation, after_image=frame)

    with pytest.raises(InvalidSliceError, match="default image is not its frame"):
        decode_image(data)


def test_an_animated_png_of_one_frame_that_is_its_image_data_is_read():
    image = tumor_slice()
    before = png_chunk(b"acTL", struct.pack(">II", 1, 0)) + frame_control(0, image)

    assert np.array_equal(decode_image(png_file(rgb_header(image), unfiltered_rows(image), before_image=before)), image)
