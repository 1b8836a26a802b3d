"""`app.imaging`: each accepted format, depth and channel layout; sniffing by magic bytes; train/serve parity."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
import tifffile
from PIL import Image

import app.core.preprocessing
import app.model_input
from app.errors import (
    EmptyFileError,
    ImageTooLargeError,
    InvalidSliceError,
    UndecodableDicomError,
    UndecodableImageError,
    UnsupportedMediaTypeError,
)
from app.imaging import ImageFormat, decode_image, sniff_format, stretch_to_uint8
from tests.api.service_client import pil_bytes, png_bytes, tiff_bytes
from tests.conftest import TUMOR_FREE_SLICE, TUMOR_SERIES, TUMOR_SLICE, read_slice
from tests.security.corpus import png_chunk
from training.data import read_image

RNG = np.random.default_rng(7)
GREY = RNG.integers(0, 256, (23, 31), dtype=np.uint8)
RGB = RNG.integers(0, 256, (23, 31, 3), dtype=np.uint8)
ALPHA = RNG.integers(0, 256, (23, 31), dtype=np.uint8)


def expected_stretch(array: np.ndarray) -> np.ndarray:
    """Per-channel min/max stretch to 0..255, written independently of `stretch_to_uint8`."""
    values = array.astype(np.float64)
    if values.ndim == 2:
        return np.rint((values - values.min()) * 255 / (values.max() - values.min())).astype(np.uint8)
    return np.dstack([expected_stretch(array[:, :, channel]) for channel in range(array.shape[2])])


def png_header_only(width: int, height: int, bit_depth: int = 8) -> bytes:
    """A PNG whose IHDR claims `width` x `height` grey pixels, with one tiny IDAT: checked before decoding."""
    header = struct.pack(">IIBBBBB", width, height, bit_depth, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(b"\0" * 16))
        + png_chunk(b"IEND", b"")
    )


def palette_png(grey: np.ndarray) -> bytes:
    stream = io.BytesIO()
    Image.fromarray(grey).convert("P", palette=Image.Palette.ADAPTIVE, colors=256).save(stream, format="PNG")
    return stream.getvalue()


GREY16 = (GREY.astype(np.uint16) * 37 + 500).astype(np.uint16)
RGB16 = np.dstack([GREY16, GREY16 // 2 + 3, 4000 - GREY16]).astype(np.uint16)

EIGHT_BIT_CASES = {
    "png_grey": (lambda: png_bytes(GREY), GREY),
    "png_grey_alpha": (lambda: pil_bytes(np.dstack([GREY, ALPHA]), "PNG"), GREY),
    "png_rgb": (lambda: png_bytes(RGB), RGB),
    "png_rgba": (lambda: png_bytes(np.dstack([RGB, ALPHA])), RGB),
    "png_palette": (lambda: palette_png(GREY), np.dstack([GREY, GREY, GREY])),  # palettes decode as RGB
    "png_one_bit": (lambda: pil_bytes(GREY > 127, "PNG"), (GREY > 127).astype(np.uint8) * 255),
    "tiff_grey": (lambda: tiff_bytes(GREY), GREY),
    "tiff_rgb": (lambda: tiff_bytes(RGB, photometric="rgb"), RGB),
    "tiff_rgba": (lambda: tiff_bytes(np.dstack([RGB, ALPHA]), photometric="rgb", extrasamples=["unassalpha"]), RGB),
    "tiff_rgb_planar": (
        lambda: tiff_bytes(np.moveaxis(RGB, -1, 0), photometric="rgb", planarconfig="separate"),
        RGB,
    ),
    "tiff_grey_deflate": (lambda: tiff_bytes(GREY, compression="zlib"), GREY),
    "tiff_rgb_lzw_pillow": (lambda: pil_bytes(RGB, "TIFF", compression="tiff_lzw"), RGB),
}


@pytest.mark.parametrize("name", sorted(EIGHT_BIT_CASES))
def test_decode_image_keeps_8_bit_pixels(name: str) -> None:
    encode, expected = EIGHT_BIT_CASES[name]

    decoded = decode_image(encode())

    assert decoded.dtype == np.uint8
    np.testing.assert_array_equal(decoded, expected)


@pytest.mark.parametrize(
    ("name", "data", "expected"),
    [
        ("png_grey16", lambda: png_bytes(GREY16), lambda: expected_stretch(GREY16)),
        ("png_rgb16", lambda: png_bytes(RGB16), lambda: expected_stretch(RGB16)),
        ("png_rgba16", lambda: png_bytes(np.dstack([RGB16, GREY16])), lambda: expected_stretch(RGB16)),
        ("tiff_grey16", lambda: tiff_bytes(GREY16), lambda: expected_stretch(GREY16)),
        ("tiff_rgb16", lambda: tiff_bytes(RGB16, photometric="rgb"), lambda: expected_stretch(RGB16)),
        ("tiff_float32", lambda: tiff_bytes(GREY16.astype(np.float32) / 7), lambda: expected_stretch(GREY16)),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_decode_image_stretches_deeper_images_per_channel(name: str, data, expected) -> None:
    decoded = decode_image(data())

    assert decoded.dtype == np.uint8
    np.testing.assert_array_equal(decoded, expected())


def test_decode_image_of_jpeg_matches_pillow() -> None:
    data = TUMOR_SLICE.read_bytes()

    np.testing.assert_array_equal(decode_image(data), read_slice(TUMOR_SLICE))


def test_decode_image_of_grey_jpeg_is_two_dimensional() -> None:
    decoded = decode_image(pil_bytes(GREY, "JPEG", quality=95))

    assert decoded.shape == GREY.shape
    assert np.abs(decoded.astype(int) - GREY).mean() < 40  # lossy, but the same picture


def test_stretch_to_uint8_passes_uint8_through_unchanged() -> None:
    assert stretch_to_uint8(RGB) is RGB


def test_stretch_to_uint8_maps_constant_channel_to_zero() -> None:
    constant = np.full((3, 3, 3), 1234, np.uint16)

    np.testing.assert_array_equal(stretch_to_uint8(constant), np.zeros((3, 3, 3), np.uint8))


def test_stretch_to_uint8_spans_float64s_whole_range_without_overflow() -> None:
    extremes = np.array([[-1e308, 0.0, 1e308]])

    with np.errstate(all="raise"):  # an overflow to inf, then inf - inf = nan, would raise here
        stretched = stretch_to_uint8(extremes)

    np.testing.assert_array_equal(stretched, [[0, 128, 255]])


def test_decode_image_refuses_complex_samples() -> None:
    with pytest.raises(InvalidSliceError, match="real numbers; this image holds complex64"):
        decode_image(tiff_bytes(np.ones((8, 8), np.complex64)))


@pytest.mark.parametrize("fill", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
def test_decode_image_refuses_a_float_image_without_one_finite_sample(fill: float) -> None:
    """Attack finding: an all-NaN float TIFF was stretched to a black slice and answered "no tumor" with a 200."""
    with pytest.raises(InvalidSliceError, match="no finite sample"):
        decode_image(tiff_bytes(np.full((8, 8), fill, np.float32)))

    partly = np.arange(64, dtype=np.float32).reshape(8, 8)
    partly[0, 0] = fill
    assert decode_image(tiff_bytes(partly)).max() == 255  # one finite sample is enough to decode


def test_stretch_to_uint8_maps_bool_to_0_255() -> None:
    flags = np.array([[True, False]])

    np.testing.assert_array_equal(stretch_to_uint8(flags), [[255, 0]])


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [
        (b"\x89PNG\r\n\x1a\n", ImageFormat.PNG),
        (b"\xff\xd8\xff\xe0", ImageFormat.JPEG),
        (b"II*\x00", ImageFormat.TIFF),
        (b"MM\x00*", ImageFormat.TIFF),
        (b"II+\x00", ImageFormat.TIFF),
        (b"MM\x00+", ImageFormat.TIFF),
    ],
)
def test_sniff_format_reads_magic_bytes(prefix: bytes, expected: ImageFormat) -> None:
    assert sniff_format(prefix + b"rest of the file") is expected


def test_sniff_format_rejects_empty_file() -> None:
    with pytest.raises(EmptyFileError, match=r"^the uploaded file is empty \(0 bytes\)"):
        sniff_format(b"")


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (b"GIF89a....", "a GIF image"),
        (b"BM\x00\x00\x00\x00", "a BMP image"),
        (b"%PDF-1.7", "a PDF document"),
        (b"PK\x03\x04zip", "a zip archive (send the files inside it)"),
        (b"<svg xmlns=", "text"),
        (b"Doe^John,1970-01-01,MRN12345", "text"),
        (b"\x89PNX\r\n\x1a\n\xff\xfe", "a file of an unknown kind"),
        (b"DICM", "text"),
        (
            b"\x08\x00\x16\x00UI\x1a\x001.2.840.10008.5.1.4.1.1.4\x00",  # SOP Class UID, explicit VR, no header
            'a DICOM data set without the Part 10 header (no "DICM" at byte 128, as some exports write them); write '
            "it as a Part 10 file, e.g. with dcmtk's dcmconv +F",
        ),
        (
            b"\x08\x00\x16\x00\x1a\x00\x00\x001.2.840.10008.5.1.4.1.1.4\x00",  # the same, implicit VR
            'a DICOM data set without the Part 10 header (no "DICM" at byte 128, as some exports write them); write '
            "it as a Part 10 file, e.g. with dcmtk's dcmconv +F",
        ),
    ],
    ids=["gif", "bmp", "pdf", "zip", "svg", "csv_export", "almost_png", "dicom_tag", "bare_dicom", "bare_implicit"],
)
def test_sniff_format_rejects_other_types_naming_what_they_look_like(data: bytes, kind: str) -> None:
    """The message names the kind of file, never its first bytes: those may be its content (a text export starts
    with a name; attack review 33)."""
    with pytest.raises(UnsupportedMediaTypeError) as raised:
        sniff_format(data)

    assert raised.value.message.endswith(f"it looks like {kind}")
    assert data[:8].hex(" ") not in raised.value.message and b"Doe" not in raised.value.message.encode()


def test_decode_image_ignores_what_the_bytes_claim_to_be_elsewhere() -> None:
    # A TIFF is decoded as TIFF even though it is full of PNG-looking bytes after its header.
    image = np.frombuffer((b"\x89PNG\r\n\x1a\n" * 100)[: 23 * 31], np.uint8).reshape(23, 31)

    np.testing.assert_array_equal(decode_image(tiff_bytes(image)), image)


@pytest.mark.parametrize(
    ("data", "prefix"),
    [
        (lambda: png_bytes(RGB)[:60], "PNG file cannot be decoded"),
        (lambda: png_bytes(GREY16)[:60], "16-bit PNG file cannot be decoded"),
        (lambda: TUMOR_SLICE.read_bytes()[:400], "JPEG file cannot be decoded"),
        (lambda: tiff_bytes(RGB, photometric="rgb")[:12], "TIFF file cannot be decoded"),
        (lambda: b"\x89PNG\r\n\x1a\n" + b"\0" * 40, "PNG file cannot be decoded"),
    ],
    ids=["png", "png16", "jpeg", "tiff", "png_no_header"],
)
def test_decode_image_rejects_truncated_file(data, prefix: str) -> None:
    with pytest.raises(UndecodableImageError) as raised:
        decode_image(data())

    assert raised.value.message.startswith(prefix), raised.value.message


def damaged_jpeg_scan(data: bytes, count: int = 400) -> bytes:
    """`data` with `count` bytes of its entropy-coded data changed, its markers left as they are (no 0xFF written,
    none changed, nor the byte after one): libjpeg decodes it with corrupt-data warnings only."""
    damaged = bytearray(data)
    start = data.index(b"\xff\xda") + 2 + int.from_bytes(data[data.index(b"\xff\xda") + 2 :][:2], "big")
    changed = 0
    for position in range(start + 100, len(damaged) - 2):
        if changed == count:
            break
        if damaged[position] != 0xFF and damaged[position - 1] != 0xFF and damaged[position + 1] != 0xFF:
            damaged[position] = damaged[position] ^ 0x55 if damaged[position] ^ 0x55 != 0xFF else 0x7E
            changed += 1
    return bytes(damaged)


def cut_jpeg_scan(data: bytes, share: float) -> bytes:
    """`data` cut after `share` of its entropy-coded data, then an end-of-image marker (libjpeg fills the rest grey)."""
    start = data.index(b"\xff\xda")
    cut = start + int((len(data) - start) * share)
    while data[cut - 1] == 0xFF:
        cut -= 1
    return data[:cut] + b"\xff\xd9"


@pytest.mark.parametrize(
    "damage", [damaged_jpeg_scan, lambda data: cut_jpeg_scan(data, 0.2)], ids=["bytes changed", "cut with an end"]
)
def test_a_jpeg_whose_image_data_is_damaged_is_refused_not_read_with_grey_rows(damage) -> None:
    """Attack review 39: Pillow decodes past damaged JPEG data (libjpeg only warns), and a tumor slice at probability
    0.99 was answered "no tumor" at 0.007; cut at 20 % with an end marker, 191 of 256 rows came back flat grey."""
    data = TUMOR_SLICE.read_bytes()
    decode_image(data)  # whole, it decodes

    with pytest.raises(UndecodableImageError) as raised:
        decode_image(damage(data))

    assert raised.value.message.startswith("JPEG file is corrupt: its image data decodes only with errors (Corrupt")


def with_jfif_revision_2(data: bytearray) -> None:
    data[data.index(b"JFIF\x00") + 5] = 2


def with_sequential_scan_ending_at_62(data: bytearray) -> None:
    scan = data.index(b"\xff\xda")
    data[scan + 2 + int.from_bytes(data[scan + 2 : scan + 4], "big") - 2] = 62


def with_icc_segment_of_a_bad_sequence_number(data: bytearray) -> None:
    bad_icc = b"ICC_PROFILE\x00\x00\x01"  # chunk 0 of 1: libjpeg warns "Corrupt JPEG data: bad ICC marker"
    data[2:2] = b"\xff\xe2" + (2 + len(bad_icc)).to_bytes(2, "big") + bad_icc


@pytest.mark.parametrize(
    "change", [with_jfif_revision_2, with_sequential_scan_ending_at_62, with_icc_segment_of_a_bad_sequence_number]
)
def test_a_jpeg_whose_libjpeg_warning_is_not_about_its_image_data_is_still_read(change) -> None:
    """libjpeg warns of an unknown JFIF revision (a camera's 2.01), or of a sequential scan whose spectral end is not
    63 ("Invalid SOS parameters for sequential JPEG", which the strict check refused at first): neither says the
    image data is damaged."""
    data = bytearray(TUMOR_SLICE.read_bytes())
    change(data)

    assert decode_image(bytes(data)).shape == (256, 256, 3)


@pytest.mark.parametrize(
    "change", [with_jfif_revision_2, with_sequential_scan_ending_at_62, with_icc_segment_of_a_bad_sequence_number]
)
def test_damaged_image_data_behind_a_warning_that_is_not_about_it_is_refused(change) -> None:
    """Attack review 40: the strict decode stops at libjpeg's first warning, and one about the header (an unknown
    JFIF revision, odd sequential scan parameters) let the damaged scan behind it through: a tumor slice at
    probability 0.99 was answered "no tumor" at 0.007."""
    data = bytearray(damaged_jpeg_scan(TUMOR_SLICE.read_bytes()))
    change(data)

    with pytest.raises(UndecodableImageError) as raised:
        decode_image(bytes(data))

    assert raised.value.message.startswith("JPEG file is corrupt: its image data decodes only with errors (Corrupt")


def test_a_cmyk_jpeg_is_still_read() -> None:
    """libjpeg converts CMYK to nothing but CMYK: the strict check decodes it as such, and Pillow reads it as RGB."""
    buffer = io.BytesIO()
    Image.fromarray(read_slice(TUMOR_SLICE)).convert("CMYK").save(buffer, format="JPEG", quality=95)

    assert decode_image(buffer.getvalue()).shape == (256, 256, 3)


def test_decode_image_rejects_multi_page_tiff() -> None:
    with pytest.raises(InvalidSliceError, match=r"^TIFF must hold one page \(one slice\); it holds 3 pages$"):
        decode_image(tiff_bytes(np.stack([GREY, GREY, GREY]), photometric="minisblack"))


@pytest.mark.parametrize("bit_depth", [8, 16])
def test_decode_image_checks_pixel_count_from_png_header(bit_depth: int) -> None:
    data = png_header_only(5000, 4000, bit_depth)

    with pytest.raises(ImageTooLargeError) as raised:
        decode_image(data, max_pixels=4096 * 4096)

    assert raised.value.message == "image is 5000x4000 = 20000000 pixels; the limit is 16777216 pixels"


def test_decode_image_checks_pixel_count_of_tiff() -> None:
    with pytest.raises(ImageTooLargeError, match=r"^image is 31x23 = 713 pixels; the limit is 700 pixels$"):
        decode_image(tiff_bytes(GREY), max_pixels=700)


def test_decode_image_checks_pixel_count_of_jpeg() -> None:
    with pytest.raises(ImageTooLargeError, match=r"^image is 256x256 = 65536 pixels; the limit is 65535 pixels$"):
        decode_image(TUMOR_SLICE.read_bytes(), max_pixels=65535)


def test_decode_image_accepts_image_at_pixel_limit() -> None:
    assert decode_image(TUMOR_SLICE.read_bytes(), max_pixels=65536).shape == (256, 256, 3)


def test_service_preprocess_slice_is_the_training_function() -> None:
    assert app.model_input.preprocess_slice is app.core.preprocessing.preprocess_slice


@pytest.mark.parametrize("path", [*TUMOR_SERIES, TUMOR_FREE_SLICE], ids=lambda path: path.stem)
def test_service_and_training_read_real_slice_identically(path) -> None:
    trained_on = read_image(path)
    served = decode_image(path.read_bytes())

    np.testing.assert_array_equal(served, trained_on)
    np.testing.assert_array_equal(
        app.model_input.preprocess_slice(served), app.core.preprocessing.preprocess_slice(trained_on)
    )


def test_decode_image_reads_tiff_colour_models_as_a_viewer_shows_them() -> None:
    """Attack finding: raw TIFF samples were read as grey or RGB whatever PhotometricInterpretation said, so a
    MinIsWhite slice was answered as its negative and a palette image as its indices."""
    flair = read_slice(TUMOR_SLICE)[:, :, 1]
    shuffled = np.random.default_rng(0).permutation(256).astype(np.uint16)
    colour_map = np.stack([shuffled * 257] * 3)  # 16-bit colours, as TIFF stores them

    np.testing.assert_array_equal(decode_image(tiff_bytes(255 - flair, photometric="miniswhite")), flair)
    np.testing.assert_array_equal(
        decode_image(tiff_bytes(flair, photometric="palette", colormap=colour_map)),
        np.repeat(shuffled[flair].astype(np.uint8)[:, :, None], 3, axis=2),
    )
    deep = decode_image(tiff_bytes((4095 - flair.astype(np.uint16) * 16), photometric="miniswhite"))
    assert np.corrcoef(deep.ravel(), flair.ravel())[0, 1] > 0.999  # brighter is higher, as shown


@pytest.mark.parametrize("mode", ["CMYK", "YCbCr", "LAB"])
def test_decode_image_refuses_tiff_colour_models_it_would_misread(mode: str) -> None:
    buffer = io.BytesIO()
    Image.fromarray(read_slice(TUMOR_SLICE)).convert(mode).save(buffer, "TIFF")

    with pytest.raises(InvalidSliceError, match="TIFF colour model .* is not read by this service"):
        decode_image(buffer.getvalue())


@pytest.mark.parametrize("slices", [3, 4])
def test_a_grey_tiff_page_of_several_slices_as_samples_is_refused(slices: int) -> None:
    """Attack review 39: a stack of slices written as one grey page of several samples per pixel (tifffile's
    volumetric layout) was read as a colour slice, three different slices taken for its three channels."""
    stack = np.stack([read_slice(path)[:, :, 1] for path in [*TUMOR_SERIES, TUMOR_SLICE][:slices]])
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, stack, photometric="minisblack", planarconfig="separate")

    with pytest.raises(
        InvalidSliceError,
        match=f"a grey TIFF .* holds one sample per pixel, and at most an alpha; this one holds {slices}",
    ):
        decode_image(buffer.getvalue())
    grey_and_alpha = io.BytesIO()
    tifffile.imwrite(
        grey_and_alpha, stack[:2].transpose(1, 2, 0), photometric="minisblack", extrasamples=["unassalpha"]
    )
    np.testing.assert_array_equal(decode_image(grey_and_alpha.getvalue()), stack[0])


def test_decode_image_reads_a_jpeg_compressed_ycbcr_tiff_as_rgb() -> None:
    buffer = io.BytesIO()
    Image.fromarray(read_slice(TUMOR_SLICE)).save(buffer, "TIFF", compression="jpeg")

    decoded = decode_image(buffer.getvalue())
    assert np.abs(decoded.astype(int) - read_slice(TUMOR_SLICE).astype(int)).mean() < 3.0  # lossy


def test_a_jpeg_compressed_tiff_whose_image_data_is_damaged_is_refused() -> None:
    """Attack review 40: OpenCV's libtiff read damaged JPEG strips with only libjpeg's warnings, and a tumor slice at
    probability 0.99 was answered "no tumor" at 0.007; each strip is checked as a JPEG file is."""
    buffer = io.BytesIO()
    Image.fromarray(read_slice(TUMOR_SLICE)).save(buffer, "TIFF", compression="jpeg")
    data = buffer.getvalue()
    with tifffile.TiffFile(io.BytesIO(data)) as tiff:
        offset, count = tiff.pages.first.dataoffsets[1], tiff.pages.first.databytecounts[1]
    damaged = data[:offset] + damaged_jpeg_scan(data[offset : offset + count], count=300) + data[offset + count :]

    with pytest.raises(UndecodableImageError) as raised:
        decode_image(damaged)

    assert raised.value.message.startswith(
        "TIFF file's JPEG strip or tile 2 is corrupt: its image data decodes only with errors (Corrupt JPEG data"
    )


def jpeg_tiff_with_tables_followed_by(extra: bytes) -> bytes:
    """A JPEG TIFF (Pillow's: shared JPEGTables, three strips) whose JPEGTables tag holds `extra` bytes after the
    tables' end marker, the tag moved to the end of the file."""
    buffer = io.BytesIO()
    Image.fromarray(read_slice(TUMOR_SLICE)).save(buffer, "TIFF", compression="jpeg")
    data = bytearray(buffer.getvalue())
    with tifffile.TiffFile(io.BytesIO(bytes(data))) as tiff:
        tag = tiff.pages.first.tags["JPEGTables"]
        tables, count_at, offset_at = bytes(tag.value), tag.offset + 4, tag.offset + 8
    data[count_at : count_at + 4] = (len(tables) + len(extra)).to_bytes(4, "little")
    data[offset_at : offset_at + 4] = len(data).to_bytes(4, "little")
    return bytes(data + tables + extra)


def test_a_jpeg_tiff_whose_tables_end_in_a_stray_byte_still_has_its_strips_checked() -> None:
    """Attack review 41: JPEGTables followed by one 00 byte were not joined to the strips, which the check then could
    not read, and let through: damaged strips were answered "no tumor" at 0.007."""
    data = jpeg_tiff_with_tables_followed_by(b"\x00")
    assert decode_image(data).shape == (256, 256, 3)  # whole, it decodes
    with tifffile.TiffFile(io.BytesIO(data)) as tiff:
        offset, count = tiff.pages.first.dataoffsets[1], tiff.pages.first.databytecounts[1]
    damaged = data[:offset] + damaged_jpeg_scan(data[offset : offset + count], count=300) + data[offset + count :]

    with pytest.raises(UndecodableImageError, match=r"^TIFF file's JPEG strip or tile 2 is corrupt"):
        decode_image(damaged)


def test_a_jpeg_tiff_strip_the_check_cannot_read_is_refused() -> None:
    """Strips decoded by OpenCV's libtiff, which ignores libjpeg's warnings, must be read by the check first."""
    data = jpeg_tiff_with_tables_followed_by(b"")
    with tifffile.TiffFile(io.BytesIO(data)) as tiff:
        tables_at = tiff.pages.first.tags["JPEGTables"].valueoffset
    unreadable = data[:tables_at] + b"\x00\x00" + data[tables_at + 2 :]  # the tables lose their start marker

    with pytest.raises(UndecodableImageError, match=r"^TIFF file's JPEG strip or tile 1 is no JPEG data"):
        decode_image(unreadable)


def test_a_jpeg_tiff_strip_larger_than_its_part_of_the_page_is_refused_before_decoding() -> None:
    """Every strip is decoded once more by the check: strips that each hold a whole large JPEG would multiply its cost,
    so a strip's JPEG may not be larger than its part of the page."""
    buffer = io.BytesIO()
    Image.fromarray(read_slice(TUMOR_SLICE)).save(buffer, "TIFF", compression="jpeg")
    data = bytearray(buffer.getvalue())
    whole_slice = TUMOR_SLICE.read_bytes()  # a 256 x 256 JPEG, taller than one strip
    with tifffile.TiffFile(io.BytesIO(bytes(data))) as tiff:
        tags = tiff.pages.first.tags
        offsets, counts = tags["StripOffsets"], tags["StripByteCounts"]
        width = 4 if offsets.dtype == 4 else 2  # LONG or SHORT values
        offsets_at = offsets.valueoffset
        counts_at, counts_width = counts.valueoffset, 4 if counts.dtype == 4 else 2
    data[offsets_at : offsets_at + width] = len(data).to_bytes(width, "little")
    data[counts_at : counts_at + counts_width] = len(whole_slice).to_bytes(counts_width, "little")
    data += whole_slice

    with pytest.raises(InvalidSliceError, match=r"^TIFF file's JPEG strip or tile 1 is no JPEG image of its 256x"):
        decode_image(bytes(data))


def test_an_old_style_jpeg_tiff_is_refused_with_a_reason() -> None:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, GREY, photometric="minisblack")
    data = bytearray(buffer.getvalue())
    with tifffile.TiffFile(io.BytesIO(bytes(data))) as tiff:
        compression = tiff.pages.first.tags["Compression"].valueoffset
    data[compression : compression + 2] = (6).to_bytes(2, "little")  # Compression 6: old-style JPEG

    with pytest.raises(UndecodableImageError, match=r"^TIFF file is old-style JPEG-compressed \(Compression 6"):
        decode_image(bytes(data))


def test_a_file_with_dicm_at_128_but_no_file_meta_is_a_broken_dicom_not_an_unknown_type() -> None:
    """Attack finding: it got 415 "must be ... DICOM (DICM at byte 128)", though it holds that marker."""
    with pytest.raises(UndecodableDicomError, match="DICM at byte 128 but no file meta group"):
        sniff_format(b"\0" * 128 + b"DICM" + b"garbage" * 10)


@pytest.mark.parametrize(
    ("several", "single", "message"),
    [
        ("PNG", "PNG", "animated PNG holds 2 frames"),
        # Attack review 30: an MPO (a JPEG followed by more pictures) was answered on its first picture.
        ("MPO", "JPEG", "JPEG must hold one picture .one slice.; this one holds 2"),
    ],
)
def test_a_file_of_several_pictures_is_refused_as_a_multi_page_tiff_is(several: str, single: str, message: str) -> None:
    pictures = [Image.fromarray(GREY), Image.fromarray(255 - GREY)]
    buffer = io.BytesIO()
    pictures[0].save(buffer, several, save_all=True, append_images=pictures[1:])

    with pytest.raises(InvalidSliceError, match=message):
        decode_image(buffer.getvalue())
    one = io.BytesIO()
    pictures[0].save(one, single)
    assert decode_image(one.getvalue()).shape == GREY.shape


def test_an_animation_is_told_by_its_chunk_not_by_the_bytes_of_a_text() -> None:
    """Attack review 53 F7: the animation check searched the file's bytes for "IDAT" and "acTL", so a text chunk
    saying "IDAT" before the real acTL let a 2-frame PNG be answered from its first frame, and a one-frame PNG
    whose text said "acTL" was refused as an animation."""
    pictures = [Image.fromarray(GREY), Image.fromarray(255 - GREY)]
    animated, single = io.BytesIO(), io.BytesIO()
    pictures[0].save(animated, "PNG", save_all=True, append_images=pictures[1:])
    pictures[0].save(single, "PNG")
    after_header = 8 + 25  # the signature, then IHDR (13 bytes of data, 12 of length, type and checksum)
    text = png_chunk(b"tEXt", b"Comment\0IDAT")
    animated_with_text = animated.getvalue()[:after_header] + text + animated.getvalue()[after_header:]
    claims = png_chunk(b"tEXt", b"Comment\0acTL\0\0\0\x07")
    single_with_text = single.getvalue()[:after_header] + claims + single.getvalue()[after_header:]

    with pytest.raises(InvalidSliceError, match="animated PNG holds 2 frames"):
        decode_image(animated_with_text)
    np.testing.assert_array_equal(decode_image(single_with_text), decode_image(single.getvalue()))


def test_a_png_out_of_chunk_order_is_refused_not_read_with_made_up_pixels() -> None:
    """Attack findings: a palette PNG without its PLTE got a prediction on the colours Pillow makes up; a PNG whose
    first chunk is not IHDR skipped the header read here (the 16-bit path and its cost)."""
    buffer = io.BytesIO()
    Image.fromarray(GREY).convert("P").save(buffer, "PNG")
    palette = buffer.getvalue()
    start = palette.index(b"PLTE") - 4
    length = struct.unpack(">I", palette[start : start + 4])[0]
    without_palette = palette[:start] + palette[start + 12 + length :]
    text_first = palette[:8] + png_chunk(b"tEXt", b"Comment\0first") + palette[8:]

    assert decode_image(palette).shape[:2] == GREY.shape  # the well-formed palette image is read
    with pytest.raises(UndecodableImageError, match="palette image \\(colour type 3\\) must hold a PLTE chunk"):
        decode_image(without_palette)
    with pytest.raises(UndecodableImageError, match="its first chunk must be IHDR"):
        decode_image(text_first)


def test_a_broken_tiff_structure_is_explained_not_reported_as_a_bare_index() -> None:
    """Attack finding: a BigTIFF header followed by garbage answered "TIFF file cannot be decoded: 0"."""
    with pytest.raises(UndecodableImageError, match="malformed where the reader expected more \\(IndexError\\)"):
        decode_image(b"II+\x00\x08\x00\x00\x00" + b"\0" * 20)


def png_of_palette(indices: np.ndarray, colours: int) -> bytes:
    """An 8-bit palette PNG of `indices` whose PLTE holds `colours` greys."""
    header = struct.pack(">IIBBBBB", indices.shape[1], indices.shape[0], 8, 3, 0, 0, 0)
    palette = bytes(value for grey in np.linspace(0, 255, colours).astype(np.uint8) for value in (grey, grey, grey))
    rows = b"".join(b"\0" + row.tobytes() for row in indices.astype(np.uint8))
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"PLTE", palette)
        + png_chunk(b"IDAT", zlib.compress(rows))
        + png_chunk(b"IEND", b"")
    )


def test_a_palette_png_whose_pixels_pass_its_palette_is_refused() -> None:
    """Attack review 39: a PNG of 16 colours whose pixels went up to index 190 was answered (Pillow reads the missing
    colours as black: probability 0.24 against 0.98 for the same slice in grey); libpng calls it an error."""
    indices = read_slice(TUMOR_SLICE)[:, :, 1]
    highest = int(indices.max())

    assert decode_image(png_of_palette(indices, highest + 1)).shape == (256, 256, 3)
    with pytest.raises(
        UndecodableImageError, match=f"its palette holds 16 colours but its pixels use colour {highest}"
    ):
        decode_image(png_of_palette(indices, 16))
