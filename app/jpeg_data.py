"""Corrupt JPEG image data, found before a slice is answered.

libjpeg decodes past damaged entropy-coded data with only a warning ("Corrupt JPEG data: premature end of data
segment", "400 extraneous bytes before marker 0xd9"), and Pillow, which decodes the service's JPEG files and DICOM
JPEG frames, ignores warnings: the damaged rows come back flat grey or scrambled, and the models answer them with
confidence (a tumor slice at probability 0.99 answered "no tumor" at 0.007, a DICOM series' volume 67.7 -> 7.2 mL,
without a word). simplejpeg (libjpeg-turbo) decodes strictly, warnings as errors, so the data is
checked with it first. Only data libjpeg-turbo reads without them but for such warnings is refused: what it cannot
read at all (a JPEG process it lacks) is left to the decoder that reads the file, which says why. No HTTP here.
"""

from __future__ import annotations

import simplejpeg

from app.jpeg_markers import image_data_only


class CorruptJpegError(ValueError):
    """JPEG data that decodes only with libjpeg's corrupt-data warnings."""


DAMAGED_DATA_WARNINGS = ("Corrupt JPEG data", "Premature end of JPEG file", "Inconsistent progression sequence")
"""How libjpeg's warnings about damaged image data begin (jerror.h: JWRN_HIT_MARKER, JWRN_EXTRANEOUS_DATA,
JWRN_HUFF_BAD_CODE, JWRN_MUST_RESYNC, JWRN_JPEG_EOF, JWRN_BOGUS_PROGRESSION ...). Its other warnings say nothing of
the pixels (an unknown JFIF revision, an Adobe transform code, a bad ICC profile marker) and refuse nothing."""
NOT_DAMAGED_DATA = ("bad ICC marker",)


def check_jpeg_data(data: bytes, what: str, unreadable_refused: bool = False) -> None:
    """Refuse `data` (one JPEG codestream: a file, or a DICOM frame) whose image data libjpeg decodes only with
    warnings that it is damaged (`DAMAGED_DATA_WARNINGS`). Costs one more decode of the image. The decode stops at
    libjpeg's first warning, so it reads `image_data_only(data)`: the segments whose warnings say nothing of the
    pixels are left out of it, and a warning it stops at is one of the image data's. With `unreadable_refused`, data
    libjpeg-turbo cannot decode at all is refused too: for a decoder that reads it anyway and ignores its warnings
    (a JPEG TIFF's strips, read by OpenCV's libtiff: strips the check cannot read would go unchecked).

    Raises
    ------
    CorruptJpegError
        Naming `what` ("JPEG file") and libjpeg's message (marker names and byte counts, never pixel values).
    """
    data = image_data_only(data)  # the warnings of segments that hold no image data would hide those after them
    try:
        colour_model = simplejpeg.decode_jpeg_header(data)[2]
    except ValueError as error:
        if unreadable_refused:
            raise _unreadable(what, error) from None
        return  # no header libjpeg-turbo reads: the file's decoder says why
    # Grey output costs least; libjpeg converts CMYK to nothing else.
    output = "CMYK" if colour_model in ("CMYK", "YCCK") else "GRAY"
    try:
        simplejpeg.decode_jpeg(data, colorspace=output, strict=True)
    except ValueError as strict_error:
        warning = str(strict_error)
        damaged = warning.startswith(DAMAGED_DATA_WARNINGS) and not any(part in warning for part in NOT_DAMAGED_DATA)
        if not damaged and not unreadable_refused:
            return  # a warning about something else, or an error: the file's decoder reads it, or says why
        try:
            simplejpeg.decode_jpeg(data, colorspace=output, strict=False)
        except ValueError as error:
            if unreadable_refused:
                raise _unreadable(what, error) from None
            return  # not decodable by libjpeg-turbo at all: the file's decoder says why
        if not damaged:
            return  # a warning about something else: the file's decoder reads it too
        raise CorruptJpegError(
            f"{what} is corrupt: its image data decodes only with errors ({strict_error}); the image would be read "
            "with damaged rows"
        ) from None


def _unreadable(what: str, error: ValueError) -> CorruptJpegError:
    return CorruptJpegError(
        f"{what} is no JPEG data libjpeg-turbo reads ({error}), so its image data cannot be checked for damage"
    )
