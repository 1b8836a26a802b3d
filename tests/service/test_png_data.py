"""16-bit PNGs are checked whole before OpenCV's libpng reads them (`app.png_data`): a broken one is refused with a
reason, and what libpng reads of a whole one is unchanged. Every PNG's chunks are counted before a decoder walks
them."""

from __future__ import annotations

import numpy as np
import pytest

from app.errors import UndecodableImageError
from app.imaging import _decode_with_opencv, decode_samples
from app.png_data import MOST_CHUNKS
from tests.security.corpus import png_chunk, png_of
from tests.service.png16_files import broken_png16s, narrow_window_png, png16, samples

SHAPES = [(40, 30), (40, 30, 3), (17, 23, 4)]


@pytest.mark.parametrize("shape", SHAPES, ids=["grey", "rgb", "rgba"])
@pytest.mark.parametrize("interlace", [0, 1], ids=["progressive", "interlaced"])
def test_a_whole_16_bit_png_is_read_as_it_holds(shape: tuple[int, ...], interlace: int) -> None:
    image = samples(shape)

    decoded = decode_samples(png16(image, interlace))

    assert decoded.dtype == np.uint16
    np.testing.assert_array_equal(decoded, image[:, :, :3] if image.ndim == 3 else image)


def test_the_chunks_left_out_change_no_sample() -> None:
    """A colour profile, text and a suggested palette (what libpng warned about when they were malformed: `iCCP:
    too short`) are not handed to libpng; the samples are those OpenCV reads from the whole file."""
    image = samples((30, 20, 3), seed=1)
    extras = png_chunk(b"iCCP", b"x\x00\x00") + png_chunk(b"tEXt", b"Comment\x00a slice") + png_chunk(b"sPLT", b"")

    decoded = decode_samples(png16(image, before_data=extras))

    np.testing.assert_array_equal(decoded, image)
    np.testing.assert_array_equal(_decode_with_opencv(png16(image)), image)


@pytest.mark.parametrize("case", list(broken_png16s()))
def test_a_broken_16_bit_png_is_refused_with_a_reason(case: str) -> None:
    data, reason = broken_png16s()[case]

    with pytest.raises(UndecodableImageError, match="16-bit PNG file cannot be decoded") as refused:
        decode_samples(data)

    assert reason in refused.value.message


def test_a_stream_whose_header_declares_a_narrower_window_than_it_uses_is_read_without_a_word_from_libpng(
    capfd: pytest.CaptureFixture[str],
) -> None:
    """Attack review 53 F6: Python's zlib, inflating in one piece, accepts back-references past the window a
    stream's header declares; libpng, inflating row by row, printed "IDAT: invalid distance too far back" on the
    service's stderr. libpng now gets the rows checked here, compressed again."""
    decoded = decode_samples(narrow_window_png())

    np.testing.assert_array_equal(decoded, np.full((32, 64, 3), 1000, np.uint16))
    assert "libpng" not in capfd.readouterr().err


def eight_bit_png_with_empty_image_chunks(image: np.ndarray, chunks: int) -> bytes:
    """`image` as an 8-bit PNG whose image data is followed by `chunks` empty IDAT chunks (valid, if odd)."""
    whole = png_of(image)
    return whole[:-12] + png_chunk(b"IDAT", b"") * chunks + whole[-12:]


def test_an_8_bit_png_of_more_chunks_than_its_size_allows_is_refused_before_pillow_walks_them() -> None:
    """Review 54 F5: the chunk cap covered 16-bit PNGs only; Pillow took 3 s over 20 MB of empty chunks."""
    data = eight_bit_png_with_empty_image_chunks(samples((40, 30)).astype(np.uint8), 70_000)

    with pytest.raises(UndecodableImageError, match="PNG file cannot be decoded") as refused:
        decode_samples(data)

    assert f"more than {MOST_CHUNKS + len(data) // 1024} chunks" in refused.value.message


def test_an_8_bit_png_of_many_chunks_within_the_cap_is_read() -> None:
    image = samples((40, 30)).astype(np.uint8)

    np.testing.assert_array_equal(decode_samples(eight_bit_png_with_empty_image_chunks(image, 60_000)), image)
