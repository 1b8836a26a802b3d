"""Decoding uploaded slices (PNG, JPEG, TIFF; 8 or 16 bit, TIFF also 32-bit and float; grey, grey+alpha, RGB,
RGBA) into uint8 arrays.

The type is judged by the file's magic bytes, never by its name or the declared content type. Unknown magic bytes are
`UnsupportedMediaTypeError` (HTTP 415); known magic bytes with a body that does not decode are
`UndecodableImageError` (HTTP 400). The pixel count and the memory decoding will take (`RasterHeader.cost_bytes`) are
checked from the header, before any pixel data is decoded.

The array returned here goes to `app.core.preprocessing.preprocess_slice`, the same transform training used.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum

import cv2
import numpy as np
import tifffile
from PIL import Image
from tifffile import COMPRESSION

from app.errors import (
    EmptyFileError,
    ImageTooLargeError,
    InvalidSliceError,
    ServiceError,
    UndecodableDicomError,
    UndecodableImageError,
    UnsupportedMediaTypeError,
    decoder_reason,
)
from app.intensity_range import sample_values, stretch_in_place, stretch_range
from app.jpeg_data import CorruptJpegError, check_jpeg_data
from app.jpeg_markers import JpegStructureError, check_jpeg_structure, frame_header
from app.memory_budget import MODEL_INPUT_BYTES, check_cost
from app.png_data import CorruptPngError, check_png, check_png_chunk_order, png_for_libpng
from app.settings import Settings
from app.tiff_decoding import (
    as_shown,
    check_tiff_compression,
    check_tiff_inflation,
    check_tiff_layout,
    check_tiff_photometric,
    compression_name,
    jpeg_codestreams,
    tiff_chunk_bytes,
)

DEFAULT_MAX_IMAGE_PIXELS: int = Settings.model_fields["max_image_pixels"].default
# Longest side of an image: DICOM's Rows and Columns stop here, and a PNG overlay cannot be written past 1,000,000.
MAX_IMAGE_SIDE = 65_535
DEFAULT_MAX_DECODE_BYTES: int = Settings.model_fields["decode_memory_bytes"].default


class ImageFormat(StrEnum):
    PNG = "PNG"
    JPEG = "JPEG"
    TIFF = "TIFF"


_SIGNATURES: tuple[tuple[bytes, ImageFormat], ...] = (
    (b"\x89PNG\r\n\x1a\n", ImageFormat.PNG),
    (b"\xff\xd8\xff", ImageFormat.JPEG),
    (b"II*\x00", ImageFormat.TIFF),
    (b"MM\x00*", ImageFormat.TIFF),
    (b"II+\x00", ImageFormat.TIFF),  # BigTIFF
    (b"MM\x00+", ImageFormat.TIFF),
)
# Pillow modes that hold 8-bit samples, and what to convert them to so that channels mean grey or R, G, B.
_GREY_MODES = {"1", "L"}
_GREY_ALPHA_MODES = {"LA", "La"}
# PNG colour type -> samples per pixel as decoded: a palette's one index becomes RGB (stored:
# `app.png_data.STORED_SAMPLES`).
_PNG_DECODED_SAMPLES = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}


def sniff_format(data: bytes) -> ImageFormat:
    """Return the image format named by the first bytes of `data`.

    Raises
    ------
    EmptyFileError
        If `data` is empty.
    UnsupportedMediaTypeError
        If the first bytes match none of PNG, JPEG, TIFF.
    """
    if not data:
        raise EmptyFileError("the uploaded file is empty (0 bytes); expected a PNG, JPEG, TIFF or DICOM file")
    for signature, image_format in _SIGNATURES:
        if data.startswith(signature):
            return image_format
    if data[128:132] == b"DICM":  # `app.dicom.dicom_header.is_dicom` found no file meta group after it
        raise UndecodableDicomError(
            "DICOM file holds DICM at byte 128 but no file meta group (group 0002 elements) after it: "
            "truncated or corrupt"
        )
    raise UnsupportedMediaTypeError(
        "unsupported file type: the file must start with the PNG, JPEG or TIFF magic bytes, "
        f"or be DICOM (DICM at byte 128); it looks like {other_kind(data)}"
    )


_OTHER_SIGNATURES = (
    (b"GIF8", "a GIF image"),
    (b"BM", "a BMP image"),
    (b"RIFF", "a RIFF file (WebP, WAV, AVI)"),
    (b"\x00\x00\x00\x0cjP  ", "a JPEG 2000 image"),
    (b"\xff\x4f\xff\x51", "a JPEG 2000 codestream"),
    (b"PK\x03\x04", "a zip archive (send the files inside it)"),
    (b"\x1f\x8b", "a gzip file"),
    (b"%PDF", "a PDF document"),
    (b"\x93NUMPY", "a NumPy array file"),
    (b"\x89HDF", "an HDF5 file"),
)


def other_kind(data: bytes) -> str:
    """What a file that is none of the formats read seems to be, from its signature: said instead of its first
    bytes, which may be its content (the start of a text export is a name)."""
    for signature, kind in _OTHER_SIGNATURES:
        if data.startswith(signature):
            return kind
    if _looks_like_bare_dicom(data):
        return (
            'a DICOM data set without the Part 10 header (no "DICM" at byte 128, as some exports write them); write '
            "it as a Part 10 file, e.g. with dcmtk's dcmconv +F"
        )
    if data[344:348] in (b"n+1\x00", b"ni1\x00"):
        return "a NIfTI volume (send its slices as PNG or TIFF)"
    try:
        data[:512].decode("utf-8")
    except UnicodeDecodeError:
        return "a file of an unknown kind"
    return "text"


def _looks_like_bare_dicom(data: bytes) -> bool:
    """Whether `data` starts like a DICOM data set written without the Part 10 preamble and meta: an element of group
    0002 or 0008 (little endian), with a VR of two capital letters (explicit VR) or a length the file can hold
    (implicit VR)."""
    if len(data) < 8 or data[:2] not in (b"\x02\x00", b"\x08\x00"):
        return False
    vr = data[4:6]
    return (vr.isalpha() and vr.isupper()) or int.from_bytes(data[4:8], "little") <= len(data) - 8


@dataclass(frozen=True)
class RasterHeader:
    """What a PNG, JPEG or TIFF header says about its pixels, read without decoding them.

    Attributes
    ----------
    samples
        Samples per pixel as decoded (a PNG palette decodes to RGB: 3).
    bytes_per_sample
        Bytes of one decoded sample (1 for 8 bits and less, 2 for 16, 8 for float64 ...).
    depth
        Planes of a volumetric TIFF (ImageDepth); 1 otherwise.
    decoder_bytes
        What the decoder holds besides its output while it decodes: one TIFF strip or tile (`tiff_chunk_bytes`).
    """

    image_format: ImageFormat
    width: int
    height: int
    samples: int
    bytes_per_sample: int
    depth: int = 1
    decoder_bytes: int = 0

    @property
    def pixels(self) -> int:
        return self.width * self.height * self.depth

    @property
    def decoded_bytes(self) -> int:
        """The decoded pixels: width x height x depth x samples x bytes per sample."""
        return self.pixels * self.samples * self.bytes_per_sample

    @property
    def cost_bytes(self) -> int:
        """Memory decoding and preprocessing take at most at once: two copies of the decoded pixels (the decoder's
        and the array handed on), one float64 channel and the sample of it that sets its range while deeper samples
        are stretched to 8 bits, the uint8 RGB image and the three-channel copy `preprocess_slice` makes before
        resizing, and the float32 model input; plus what the decoder holds besides its output."""
        stretch = 8 * (self.pixels + sample_values(self.pixels, [self.pixels])) if self.bytes_per_sample > 1 else 0
        return 2 * self.decoded_bytes + stretch + 2 * self.pixels * 3 + MODEL_INPUT_BYTES + self.decoder_bytes

    def describe(self) -> str:
        depth = f" x {self.depth} planes" if self.depth != 1 else ""
        chunk = (
            f", and a strip or tile of {self.decoder_bytes} bytes" if self.decoder_bytes > self.decoded_bytes else ""
        )
        return (
            f"{self.width}x{self.height}{depth} pixels x {self.samples} samples x {8 * self.bytes_per_sample} bits "
            f"= {self.decoded_bytes} bytes of pixels, with their working copies and the model input{chunk}"
        )


def read_image_header(data: bytes) -> RasterHeader:
    """Read the size, samples and sample depth of a PNG, JPEG or TIFF from its header alone.

    PNG: the IHDR chunk (Pillow would report a 16-bit colour PNG as 8-bit RGB). JPEG: Pillow, which opens lazily.
    TIFF: tifffile, which reads the tags without decoding; a TIFF of several pages is refused here.

    Raises
    ------
    EmptyFileError, UnsupportedMediaTypeError, UndecodableImageError, InvalidSliceError
    """
    image_format = sniff_format(data)
    if image_format is ImageFormat.TIFF:
        return _tiff_header(data)
    if image_format is ImageFormat.JPEG:
        try:
            check_jpeg_structure(data, "JPEG file")  # before Pillow parses a single segment
        except JpegStructureError as error:
            raise InvalidSliceError(str(error)) from None
    if image_format is ImageFormat.PNG:
        check_png_chunk_order(data)
        width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        bit_depth, colour_type = data[24], data[25]
        samples = _PNG_DECODED_SAMPLES.get(colour_type, 4)
        return RasterHeader(image_format, width, height, samples, 2 if bit_depth > 8 else 1)
    return _pillow_header(data, image_format)


def check_image_header(header: RasterHeader, max_pixels: int, max_bytes: int | None) -> None:
    """Refuse, before decoding, an image over `max_pixels` (width x height) or whose decoding would cost more than
    `max_bytes` (None: no budget), or whose samples can make no slice.

    Raises
    ------
    ImageTooLargeError, InvalidSliceError, app.errors.OverMemoryBudgetError
    """
    _check_pixel_count(header.width, header.height, max_pixels)
    if not 1 <= header.samples <= 4:
        raise InvalidSliceError(
            "image must be grey, grey+alpha, RGB or RGBA (1 to 4 samples per pixel); "
            f"the {header.image_format.value} header says {header.samples} samples per pixel"
        )
    if max_bytes is not None:
        check_cost(f"{header.image_format.value} image", header.cost_bytes, header.describe(), max_bytes)


def decode_image(
    data: bytes, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS, max_bytes: int | None = DEFAULT_MAX_DECODE_BYTES
) -> np.ndarray:
    """Decode one uploaded slice into a uint8 array, HxW (grey, taken as FLAIR) or HxWx3: the service's decoding
    (`app.uploads.prepare_upload`, which also stretches a raster series on one scale) in one call, for the tests and
    benchmarks that need a slice as the service reads it.

    Alpha channels are dropped (an MR slice has no transparency). 8-bit samples are kept as they are, which is how
    training read its images; other depths are stretched to 8 bits by `stretch_to_uint8`.

    Parameters
    ----------
    data
        The file's bytes.
    max_pixels
        Largest accepted width x height, checked from the header before the pixels are decoded.
    max_bytes
        Most memory decoding may take (`RasterHeader.cost_bytes`), checked from the header; None: no limit.

    Returns
    -------
    numpy.ndarray
        uint8, HxW or HxWx3.

    Raises
    ------
    EmptyFileError, UnsupportedMediaTypeError, UndecodableImageError, ImageTooLargeError, InvalidSliceError (also
    for a float image without one finite sample), app.errors.OverMemoryBudgetError
    """
    return stretch_to_uint8(decode_samples(data, max_pixels, max_bytes))


def decode_samples(
    data: bytes, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS, max_bytes: int | None = DEFAULT_MAX_DECODE_BYTES
) -> np.ndarray:
    """`decode_image` before the stretch to 8 bits: the samples as the file holds them, HxW or HxWx3 (alpha
    dropped), so that the slices of a series can be stretched together (`app.uploads.prepare_series_uploads`).

    Raises
    ------
    As `decode_image`.
    """
    header = read_image_header(data)
    check_image_header(header, max_pixels, max_bytes)
    if header.image_format is ImageFormat.TIFF:
        array = _decode_tiff(data)
    elif header.image_format is ImageFormat.PNG and header.bytes_per_sample == 2:
        array = _decode_png16(data)
    else:
        if header.image_format is ImageFormat.JPEG:
            _check_jpeg_data(data)
        elif header.image_format is ImageFormat.PNG:
            _check_png_whole(data)
        array = _decode_with_pillow(data, header.image_format, max_pixels)
    if array.dtype.kind not in "biuf":  # a complex or structured TIFF: no intensity to read
        raise InvalidSliceError(f"image samples must be real numbers; this image holds {array.dtype.name} samples")
    if array.dtype.kind == "f" and array.size and not np.isfinite(array).any():
        # Stretched, it would be a black slice, answered "no tumor" with confidence.
        raise InvalidSliceError("image holds no finite sample (every sample is NaN or infinite)")
    return _drop_alpha(array)


def is_stretched(array: np.ndarray) -> bool:
    """Whether `stretch_to_uint8` stretches `array`'s samples (deeper than 8 bits, signed, float), or keeps them
    (uint8 as it is, a bilevel image as 0 and 255)."""
    return array.dtype not in (np.uint8, np.bool_)


def stretch_to_uint8(array: np.ndarray, ranges: Sequence[tuple[float, float]] | None = None) -> np.ndarray:
    """Map an image of any sample type to uint8; uint8 passes through unchanged.

    Deeper images (16-bit, 32-bit integer, float) get a per-channel min/max stretch to 0..255:
    `round((x - min) * 255 / (max - min))`, over the image's own range, or over `ranges` (one (low, high) per
    channel: a series' range, `app.uploads.prepare_series_uploads`). Why not a fixed divide-by-257: 16-bit MR
    exports rarely use the whole 0..65535 range (scanner values usually sit within 0..4095), so a fixed scale would
    turn most uploads into near-black images unlike anything the models saw. The kaggle_3m volumes the models
    learned from were each rescaled to fill 0..255, one sequence (channel) at a time over the whole volume, so a
    series is stretched over all its slices; a slice sent alone can only be stretched over itself (brighter than
    in training when it is not the volume's brightest). What it costs: absolute intensities are lost, and a
    constant channel becomes 0; a few pixels far above the rest (`app.intensity_range`) saturate at 255 instead of
    compressing the rest.
    """
    if not is_stretched(array):
        return array if array.dtype == np.uint8 else array.astype(np.uint8) * np.uint8(255)
    if array.ndim != 3:
        return _stretch_channel(_finite_float(array), None if ranges is None else ranges[0])
    # One channel at a time, in place: one float64 copy of a channel at most (the memory budget counts on it).
    stretched = np.empty(array.shape, dtype=np.uint8)
    for channel, values in float_channels(array):
        stretched[:, :, channel] = _stretch_channel(values, None if ranges is None else ranges[channel])
        del values  # before the next channel's copy is made
    return stretched


def _stretch_channel(values: np.ndarray, value_range: tuple[float, float] | None) -> np.ndarray:
    """`values` (float64, overwritten) stretched over `value_range`, or over their own range: min..max, unless a few
    pixels lie far from the rest (then they saturate)."""
    low, high = stretch_range([values]) if value_range is None else value_range
    return stretch_in_place(values, low, high)


def float_channels(array: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """(index, float64 copy) of each channel of an HxW or HxWxC image in turn, not-a-number and infinite samples
    set to 0: what the stretch reads. One copy at a time, if the caller drops each before taking the next."""
    if array.ndim != 3:
        yield 0, _finite_float(array)
        return
    for channel in range(array.shape[2]):
        yield channel, _finite_float(array[:, :, channel])


def _finite_float(channel: np.ndarray) -> np.ndarray:
    values = channel.astype(np.float64)
    if channel.dtype.kind == "f":  # integers have no NaN, and the check's masks would cost two bytes a pixel
        np.nan_to_num(values, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    return values


def _check_pixel_count(width: int, height: int, max_pixels: int) -> None:
    if max(width, height) > MAX_IMAGE_SIDE:
        raise ImageTooLargeError(
            f"image is {width}x{height} pixels; no side may be over {MAX_IMAGE_SIDE} pixels (a DICOM image's limit)"
        )
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels} pixels"
        )


def _pillow_header(data: bytes, image_format: ImageFormat) -> RasterHeader:
    """Pillow reads only the header when it opens a file; the pixels are decoded on first access."""
    try:
        with Image.open(io.BytesIO(data), formats=[image_format.value]) as image:
            samples = 3 if image.mode == "P" else len(image.getbands())
            bytes_per_sample = 2 if image.mode.startswith("I;16") else 4 if image.mode in ("I", "F") else 1
            header = RasterHeader(image_format, image.width, image.height, samples, bytes_per_sample)
            pictures = getattr(image, "n_frames", 1)
    except Image.DecompressionBombError as error:
        raise ImageTooLargeError(f"image is too large to decode ({error})") from error
    except Exception as error:  # Pillow raises many types for a corrupt header; all mean the same to a client.
        raise UndecodableImageError(f"{image_format.value} file cannot be decoded: {error}") from error
    if pictures > 1:  # a multi-picture JPEG (MPO, a stereo camera's): read on its first, as an animated PNG would be
        raise InvalidSliceError(
            f"{image_format.value} must hold one picture (one slice); this one holds {pictures} (multi-picture format)"
        )
    return header


def _check_jpeg_data(data: bytes, what: str = "JPEG file", unreadable_refused: bool = False) -> None:
    """Damaged JPEG data is refused, not decoded into flat grey rows (`app.jpeg_data`)."""
    try:
        check_jpeg_data(data, what, unreadable_refused)
    except CorruptJpegError as error:
        raise UndecodableImageError(str(error)) from None


def _check_tiff_jpeg_data(data: bytes, page: tifffile.TiffPage) -> None:
    """A JPEG-compressed TIFF's strips or tiles are checked as a JPEG file is (`jpeg_codestreams`); an old-style
    JPEG one was refused with the header (`check_tiff_compression`)."""
    if page.compression != COMPRESSION.JPEG:
        return
    chunk_rows, chunk_columns = page.chunks[0], page.chunks[1]
    # The strips or tiles may hold the page's pixels, padded to whole chunks, and no more: every codestream is decoded
    # once more by the check, so strips that repeat one large codestream would multiply its cost.
    pixels_left = math.ceil(page.imagelength / chunk_rows) * math.ceil(page.imagewidth / chunk_columns)
    pixels_left *= chunk_rows * chunk_columns
    for number, codestream in enumerate(jpeg_codestreams(data, page), start=1):
        what = f"TIFF file's JPEG strip or tile {number}"
        try:
            check_jpeg_structure(codestream, what)
        except JpegStructureError as error:
            raise InvalidSliceError(str(error)) from None
        frame = frame_header(codestream)
        pixels_left -= frame.rows * frame.columns if frame is not None else 0
        if frame is None or frame.rows > chunk_rows or frame.columns > chunk_columns or pixels_left < 0:
            raise InvalidSliceError(
                f"{what} is no JPEG image of its {chunk_columns}x{chunk_rows} (columns x rows) part of the page; "
                "refused before decoding"
            )
        _check_jpeg_data(codestream, what, unreadable_refused=True)


def _decode_with_pillow(data: bytes, image_format: ImageFormat, max_pixels: int) -> np.ndarray:
    try:
        image = Image.open(io.BytesIO(data), formats=[image_format.value])
    except Image.DecompressionBombError as error:
        raise ImageTooLargeError(f"image is too large to decode ({error}); the limit is {max_pixels} pixels") from error
    except Exception as error:  # Pillow raises many types for a corrupt header; all mean the same to a client.
        raise UndecodableImageError(f"{image_format.value} file cannot be decoded: {error}") from error
    with image:
        _check_pixel_count(image.width, image.height, max_pixels)
        try:
            if image.mode in _GREY_MODES:
                image = image.convert("L")
            elif image.mode in _GREY_ALPHA_MODES:
                image = image.getchannel("L")
            elif image.mode in ("I", "F") or image.mode.startswith("I;16"):
                pass  # deeper than 8 bits: stretched by the caller
            elif image.mode != "RGB":
                if image.mode == "P":
                    _check_palette_indices(image, image_format)
                image = image.convert("RGB")  # palette, RGBA, CMYK, YCbCr ...: alpha and colour model dropped
            return np.asarray(image)
        except ServiceError:
            raise
        except Exception as error:
            raise UndecodableImageError(f"{image_format.value} file cannot be decoded: {error}") from error


def _check_palette_indices(image: Image.Image, image_format: ImageFormat) -> None:
    """Refuse a palette image whose pixels name colours its palette does not hold: Pillow reads them as black
    (a PNG of 16 colours whose pixels go up to index 190 was answered at probability 0.24 instead of 0.98),
    where libpng calls it an error."""
    colours = len(image.palette.palette) // len(image.palette.mode) if image.palette is not None else 0
    highest = int(image.getextrema()[1])
    if highest >= colours:
        raise UndecodableImageError(
            f"{image_format.value} file cannot be decoded: its palette holds {colours} colours but its pixels use "
            f"colour {highest}"
        )


def _check_png_whole(data: bytes) -> None:
    """An 8-bit (or fewer) PNG is checked whole before Pillow decodes it (`check_png`): Pillow fills the rows a stream
    cut short does not hold with black and says nothing, and walks any number of chunks."""
    try:
        check_png(data)
    except CorruptPngError as error:
        raise UndecodableImageError(f"PNG file cannot be decoded: {error}") from None


def _decode_png16(data: bytes) -> np.ndarray:
    """16-bit PNG: Pillow would cut colour ones to their high byte, so OpenCV decodes them (after the header checks),
    once `png_for_libpng` has found nothing its libpng would complain about on stderr."""
    try:
        data = png_for_libpng(data)
    except CorruptPngError as error:
        raise UndecodableImageError(f"16-bit PNG file cannot be decoded: {error}") from None
    array = _decode_with_opencv(data)
    if array is None:
        raise UndecodableImageError("16-bit PNG file cannot be decoded: the data is truncated or corrupt")
    return array


def _decode_with_opencv(data: bytes) -> np.ndarray | None:
    """Decode keeping depth and channels; OpenCV's BGR(A) order is turned into RGB(A). None if it cannot."""
    array = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if array is None:
        return None
    if array.ndim == 3 and array.shape[2] == 3:
        array = cv2.cvtColor(array, cv2.COLOR_BGR2RGB)
    elif array.ndim == 3 and array.shape[2] == 4:
        array = cv2.cvtColor(array, cv2.COLOR_BGRA2RGBA)
    return array


def _tiff_header(data: bytes) -> RasterHeader:
    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tiff:
            page_count = len(tiff.pages)
            page = tiff.pages.first
            if page.dtype is None:  # a sample format or bits per sample no decoder reads
                raise UndecodableImageError(
                    f"TIFF file cannot be decoded: {page.bitspersample} bits per sample of sample format "
                    f"{page.sampleformat} is not an image type"
                )
            check_tiff_photometric(page)
            check_tiff_compression(page)
            check_tiff_layout(data, page)
            palette = page.photometric == tifffile.PHOTOMETRIC.PALETTE
            header = RasterHeader(
                ImageFormat.TIFF,
                int(page.imagewidth),
                int(page.imagelength),
                3 if palette else int(page.samplesperpixel),  # a colour map gives R, G, B
                1 if palette else int(page.dtype.itemsize),
                max(1, int(page.imagedepth)),
                tiff_chunk_bytes(page),
            )
    except ServiceError:
        raise
    except Exception as error:  # tifffile raises TiffFileError, ValueError, struct.error ... for broken files
        raise UndecodableImageError(f"TIFF file cannot be decoded: {decoder_reason(error)}") from error
    if page_count != 1:
        raise InvalidSliceError(f"TIFF must hold one page (one slice); it holds {page_count} pages")
    return header


def _decode_tiff(data: bytes) -> np.ndarray:
    """TIFF via tifffile and imagecodecs (any depth, every compression `check_tiff_compression` takes).

    Why one decoder: OpenCV's libtiff returns the rows it cannot decode as black and turns the page by its
    Orientation tag, so a damaged or cut-short strip would be answered "no tumor" and one set of stored pixels read
    two ways."""
    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tiff:
            page = tiff.pages.first
            axes = page.axes
            _check_tiff_jpeg_data(data, page)
            check_tiff_inflation(data, page)
            try:
                array = as_shown(page.asarray(maxworkers=1), page)  # one chunk at a time: what the budget counts
            except Exception as error:  # the codecs raise on data that does not decode to the strip's rows
                raise UndecodableImageError(
                    f"TIFF file cannot be decoded: its {compression_name(page.compression)} image data is damaged or "
                    f"cut short ({decoder_reason(error)})"
                ) from error
    except ServiceError:
        raise
    except Exception as error:  # tifffile raises TiffFileError, ValueError, struct.error ... for broken files
        raise UndecodableImageError(f"TIFF file cannot be decoded: {decoder_reason(error)}") from error
    if array.ndim == 3 and axes.startswith("S"):  # planar configuration: samples first
        array = np.moveaxis(array, 0, -1)
    return array


def _drop_alpha(array: np.ndarray) -> np.ndarray:
    """HxW, HxWx1, HxWx2 (grey+alpha), HxWx3, HxWx4 (RGBA) -> HxW or HxWx3."""
    if array.ndim == 3 and array.shape[2] in (1, 2):
        return array[:, :, 0]
    if array.ndim == 3 and array.shape[2] == 4:
        return array[:, :, :3]
    if array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 3):
        return array
    raise InvalidSliceError(
        f"image must be grey, grey+alpha, RGB or RGBA (HxW or HxWxC with C in 1..4); got shape {array.shape}"
    )
