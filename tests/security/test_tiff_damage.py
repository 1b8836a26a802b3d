"""Attack review 42: a TIFF whose compressed strips are damaged or cut short is refused, and one set of stored pixels
is read one way whatever the compression (OpenCV's libtiff, the fallback before, decoded LZW and damaged strips with
black rows, turned the page by its Orientation tag and left 16-bit MinIsWhite negative)."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
import tifffile

from app.errors import InvalidSliceError, OverMemoryBudgetError, UndecodableImageError
from app.imaging import decode_image, decode_samples, read_image_header
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


@pytest.mark.parametrize("bits", [2, 4])
@pytest.mark.parametrize("photometric", ["minisblack", "miniswhite"])
def test_2_and_4_bit_grey_samples_are_read_on_the_8_bit_scale(bits: int, photometric: str):
    """Attack review 43: 4-bit samples were read as 0..15, a nearly black slice answered "no tumor" (p 0.002)."""
    values = (corpus.tumor_slice()[:, :, 1] >> (8 - bits)).astype(np.uint8)
    top = (1 << bits) - 1
    stored = values if photometric == "minisblack" else (top - values).astype(np.uint8)

    decoded = decode_image(corpus.tiff_of(stored, bitspersample=bits, photometric=photometric))

    np.testing.assert_array_equal(decoded, (values.astype(np.uint16) * 255 // top).astype(np.uint8))


def with_tile_size(data: bytes, columns: int, rows: int) -> bytes:
    """`data` (a TIFF of one tile) with its TileWidth and TileLength set to `columns` and `rows`."""
    patched = bytearray(data)
    with tifffile.TiffFile(io.BytesIO(data)) as tiff:
        tags = tiff.pages.first.tags
        for code, value in ((322, columns), (323, rows)):
            struct.pack_into({3: "<H", 4: "<I"}[int(tags[code].dtype)], patched, tags[code].valueoffset, value)
    return bytes(patched)


@pytest.mark.parametrize("compression", [None, "jpeg", "lzw", "zlib"])
def test_a_tile_declared_far_larger_than_its_image_counts_in_the_budget(compression: str | None):
    """Attack review 43: a 64 x 64 JPEG TIFF of one 65520 x 65520 tile took 4 GiB to decode, budgeted at 1 MiB."""
    image = np.ascontiguousarray(corpus.tumor_slice()[96:160, 96:160, 1])
    data = with_tile_size(corpus.tiff_of(image, tile=(64, 64), compression=compression), 65520, 16384)

    assert read_image_header(data).cost_bytes > 65520 * 16384
    with pytest.raises(OverMemoryBudgetError):
        decode_image(data)


@pytest.mark.parametrize("compression", ["zlib", "lzma", "packbits"])
@pytest.mark.parametrize("sample", ["rgb16", "float64"])
def test_tiles_larger_than_the_image_are_read(compression: str, sample: str):
    """Attack review 43: a 256 x 256 slice in 512 x 512 tiles was refused as inflating past its size."""
    image = corpus.tumor_slice().astype(np.uint16) * 200 if sample == "rgb16" else corpus.tumor_slice()[:, :, 1] / 255.0

    tiled = corpus.tiff_of(image, tile=(512, 512), compression=compression)

    assert np.array_equal(decode_image(tiled), decode_image(corpus.tiff_of(image)))


def ifd_entries(data: bytearray) -> dict[int, int]:
    """Each tag of the first IFD (little-endian classic TIFF) -> its entry's offset in `data`."""
    ifd = int.from_bytes(data[4:8], "little")
    count = int.from_bytes(data[ifd : ifd + 2], "little")
    return {int.from_bytes(data[ifd + 2 + 12 * i : ifd + 4 + 12 * i], "little"): ifd + 2 + 12 * i for i in range(count)}


@pytest.mark.parametrize("kind", ["undefined", "two values"])
def test_a_tile_size_that_is_not_one_number_is_refused_before_it_costs_anything(kind: str):
    """Attack review 59 F1: a TileLength of type UNDEFINED (bytes) or of two values (a tuple) was multiplied as a
    sequence: a 4.5 KB file took 1 GiB, then a 500 (`int + bytes`)."""
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, np.zeros((64, 64, 3), np.uint8), photometric="rgb", tile=(32, 32), compression="zlib")
    data = bytearray(buffer.getvalue())
    entry = ifd_entries(data)[323]  # TileLength
    extra = len(data)
    data += b"\x20" * 4096 if kind == "undefined" else struct.pack("<2I", 32, 32)
    kind_code, count = (7, 4096) if kind == "undefined" else (4, 2)
    struct.pack_into("<HII", data, entry + 2, kind_code, count, extra)

    with pytest.raises(UndecodableImageError, match="size tags are not each one number"):
        read_image_header(bytes(data))


@pytest.mark.parametrize("compression", [None, "lzw", "zlib"])
def test_a_strip_at_offset_zero_is_refused_not_read_as_black_rows(compression: str | None):
    """Attack review 59 F3: tifffile reads a strip of offset 0 as missing ("sparse") and fills it with zeros; the
    tumor slice with its middle strips so was answered "no tumor" at 0.012."""
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, corpus.tumor_slice(), photometric="rgb", compression=compression, rowsperstrip=16)
    data = bytearray(buffer.getvalue())
    assert np.array_equal(decode_image(bytes(data)), corpus.tumor_slice())
    offsets = int.from_bytes(data[ifd_entries(data)[273] + 8 :][:4], "little")  # StripOffsets' array
    struct.pack_into("<I", data, offsets + 4 * 5, 0)

    for read in (read_image_header, decode_image):
        with pytest.raises(UndecodableImageError, match="a strip or tile is missing"):
            read(bytes(data))


def test_a_volume_is_refused_not_read_as_a_colour_image():
    """Attack review 59 F7: 48 planes of 64 x 3 pixels decoded to 48 x 64 x 3 and passed as a colour image."""
    buffer = io.BytesIO()
    volume = np.random.default_rng(7).integers(0, 255, (48, 64, 3), np.uint8)
    tifffile.imwrite(buffer, volume, photometric="minisblack", volumetric=True, tile=(48, 16, 16))

    with pytest.raises(InvalidSliceError, match="volume of 48 planes"):
        read_image_header(buffer.getvalue())


def with_last_strip_count(data: bytes, count: int) -> bytes:
    """`data` with its last strip's StripByteCounts set to `count`."""
    changed = bytearray(data)
    with tifffile.TiffFile(io.BytesIO(data)) as tiff:
        tag = tiff.pages.first.tags["StripByteCounts"]
        strips = len(tiff.pages.first.databytecounts)
    layout = {3: "<H", 4: "<I"}[int(tag.dtype)]
    struct.pack_into(layout, changed, tag.valueoffset + struct.calcsize(layout) * (strips - 1), count)
    return bytes(changed)


def test_an_uncompressed_last_strip_counted_as_a_whole_strip_is_read():
    """Review 61 F5: some writers give the last, shorter strip a whole strip's byte count, past the file's end;
    the file still holds every row, and is read as before."""
    grey = (np.arange(100 * 90) % 60000).astype(np.uint16).reshape(100, 90)
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, grey, rowsperstrip=16)

    decoded = decode_samples(with_last_strip_count(buffer.getvalue(), 16 * 90 * 2))

    assert np.array_equal(decoded, grey)


def test_an_uncompressed_tiff_cut_inside_its_last_strip_is_refused():
    grey = (np.arange(100 * 90) % 60000).astype(np.uint16).reshape(100, 90)
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, grey, rowsperstrip=16)
    data = buffer.getvalue()
    with tifffile.TiffFile(io.BytesIO(data)) as tiff:
        end = tiff.pages.first.dataoffsets[-1] + tiff.pages.first.databytecounts[-1]
    assert end == len(data)  # the image data comes last: cutting the file cuts the strip

    with pytest.raises(UndecodableImageError, match="hold fewer bytes than its image"):
        read_image_header(data[:-100])
