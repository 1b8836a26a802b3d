"""Decoding uploaded slices (PNG, JPEG, TIFF; 8 or 16 bit; grey, grey+alpha, RGB, RGBA) into uint8 arrays.

The type is judged by the file's magic bytes, never by its name or the declared content type. Unknown magic bytes are
`UnsupportedMediaTypeError` (HTTP 415); known magic bytes with a body that does not decode are
`UndecodableImageError` (HTTP 400). The pixel count is checked from the header, before any pixel data is decoded.

The array returned here goes to `app.core.preprocessing.preprocess_slice`, the same transform training used.
"""

from __future__ import annotations

import io
from enum import StrEnum

import cv2
import numpy as np
import tifffile
from PIL import Image

from app.errors import (
    EmptyFileError,
    ImageTooLargeError,
    InvalidSliceError,
    ServiceError,
    UndecodableImageError,
    UnsupportedMediaTypeError,
)
from app.settings import Settings

DEFAULT_MAX_IMAGE_PIXELS: int = Settings.model_fields["max_image_pixels"].default


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
    raise UnsupportedMediaTypeError(
        "unsupported file type: the file must start with the PNG, JPEG or TIFF magic bytes, "
        "or be DICOM (DICM at byte 128); "
        f"its first bytes are {data[:8].hex(' ')}"
    )


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> np.ndarray:
    """Decode one uploaded slice into a uint8 array, HxW (grey, taken as FLAIR) or HxWx3.

    Alpha channels are dropped (an MR slice has no transparency). 8-bit samples are kept as they are, which is how
    training read its images; other depths are stretched to 8 bits by `stretch_to_uint8`.

    Parameters
    ----------
    data
        The file's bytes.
    max_pixels
        Largest accepted width x height, checked from the header before the pixels are decoded.

    Returns
    -------
    numpy.ndarray
        uint8, HxW or HxWx3.

    Raises
    ------
    EmptyFileError, UnsupportedMediaTypeError, UndecodableImageError, ImageTooLargeError, InvalidSliceError
    """
    image_format = sniff_format(data)
    if image_format is ImageFormat.TIFF:
        array = _decode_tiff(data, max_pixels)
    elif image_format is ImageFormat.PNG and _png_bit_depth(data) == 16:
        array = _decode_png16(data, max_pixels)
    else:
        array = _decode_with_pillow(data, image_format, max_pixels)
    return stretch_to_uint8(_drop_alpha(array))


def stretch_to_uint8(array: np.ndarray) -> np.ndarray:
    """Map an image of any sample type to uint8; uint8 passes through unchanged.

    Deeper images (16-bit, 32-bit integer, float) get a per-image, per-channel min/max stretch to 0..255:
    `round((x - min) * 255 / (max - min))`. Why not a fixed divide-by-257: 16-bit MR exports rarely use the whole
    0..65535 range (scanner values usually sit within 0..4095), so a fixed scale would turn most uploads into
    near-black images unlike anything the models saw. The kaggle_3m slices the models learned from were each
    rescaled to fill 0..255, one sequence (channel) at a time, so stretching each channel's own range is the
    closest match. What it costs: absolute intensities are lost, a single very bright outlier compresses the rest,
    and a constant channel becomes 0.
    """
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * np.uint8(255)
    values = np.nan_to_num(array.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    axes = (0, 1) if values.ndim == 3 else None
    low = values.min(axis=axes, keepdims=True)
    span = values.max(axis=axes, keepdims=True) - low
    scaled = np.divide(values - low, span, out=np.zeros_like(values), where=span > 0)
    return np.rint(scaled * 255.0).astype(np.uint8)


def _check_pixel_count(width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels} pixels"
        )


def _png_bit_depth(data: bytes) -> int | None:
    # IHDR is always the first chunk: 8-byte signature, 4-byte length, b"IHDR", width, height, then bit depth.
    if len(data) < 25 or data[12:16] != b"IHDR":
        return None
    return data[24]


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
                image = image.convert("RGB")  # palette, RGBA, CMYK, YCbCr ...: alpha and colour model dropped
            return np.asarray(image)
        except Exception as error:
            raise UndecodableImageError(f"{image_format.value} file cannot be decoded: {error}") from error


def _decode_png16(data: bytes, max_pixels: int) -> np.ndarray:
    """16-bit PNG: Pillow would cut colour ones to their high byte, so OpenCV decodes them, after the size check."""
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    _check_pixel_count(width, height, max_pixels)
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


def _decode_tiff(data: bytes, max_pixels: int) -> np.ndarray:
    """TIFF via tifffile (any depth); OpenCV (libtiff) decodes the compressions tifffile needs imagecodecs for."""
    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tiff:
            page_count = len(tiff.pages)
            page = tiff.pages.first
            width, height, axes = int(page.imagewidth), int(page.imagelength), page.axes
            if page_count != 1:
                raise InvalidSliceError(f"TIFF must hold one page (one slice); it holds {page_count} pages")
            _check_pixel_count(width, height, max_pixels)
            try:
                array = page.asarray()
            except Exception as error:
                array = _decode_with_opencv(data)
                if array is None:
                    raise UndecodableImageError(f"TIFF file cannot be decoded: {error}") from error
                axes = "YXS" if array.ndim == 3 else "YX"
    except ServiceError:
        raise
    except Exception as error:  # tifffile raises TiffFileError, ValueError, struct.error ... for broken files
        raise UndecodableImageError(f"TIFF file cannot be decoded: {error}") from error
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
