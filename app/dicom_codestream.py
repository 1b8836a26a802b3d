"""The sizes compressed (encapsulated) pixel data declares, checked before a decoder allocates them.

A JPEG, JPEG-LS or JPEG 2000 decoder allocates the image its codestream declares, whatever the DICOM header says:
`check_codestreams` walks the pixel data's fragments and refuses a codestream whose size is not Rows x Columns (a
JPEG 2000 one also inside a JP2 file wrapper, which OpenJPEG decodes as well), a JPEG or JPEG-LS one whose
components are not SamplesPerPixel, and a JPEG frame over the scan and segment limits of `app.jpeg_markers`.
Failures are `app.errors.ServiceError`s; nothing here logs.
"""

from __future__ import annotations

from collections.abc import Iterator

from pydicom.uid import UID, JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLossless, JPEGLosslessSV1

from app.errors import InvalidDicomImageError, UndecodableDicomError
from app.jpeg_markers import JpegStructureError, check_jpeg_structure, frame_header

UNDEFINED_LENGTH = 0xFFFFFFFF
_ITEM_TAG, _SEQUENCE_DELIMITER_TAG = b"\xfe\xff\x00\xe0", b"\xfe\xff\xdd\xe0"
_JPEG_SYNTAXES = frozenset({JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLossless, JPEGLosslessSV1})
"""The JPEG (not JPEG-LS, not JPEG 2000) transfer syntaxes a decoder here reads."""
_JPEG2000_SOC_SIZ = b"\xff\x4f\xff\x51"
_JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"
MAX_JPEG2000_TILES = 4096
"""OpenJPEG keeps about 9 KB per tile: a 512x512 codestream of 3x3-pixel tiles (29,241 of them) took 277 MiB that
no budget counted. Real MR images are one tile, or a few hundred on very large images."""


def check_codestreams(
    data: bytes, position: int, transfer_syntax: UID, rows: int, columns: int, samples_per_pixel: int = 1
) -> None:
    """Refuse a compressed frame whose codestream declares another size than Rows x Columns, or (JPEG, JPEG-LS)
    other components than SamplesPerPixel, or a JPEG frame with too many scans or segments.

    The decoders allocate what the codestream says: a header of 64x64 over a 16384x16384 JPEG 2000 codestream
    would take 512 MiB before pydicom noticed the mismatch. A colour JPEG under a MONOCHROME2 header was decoded
    by GDCM without complaint, and its pixels read as grey: a wrong answer, not an error.
    """
    if int.from_bytes(data[position + 8 : position + 12], "little") != UNDEFINED_LENGTH:
        return  # not encapsulated after all: pydicom refuses it when decoding
    jpeg2000 = transfer_syntax.startswith("1.2.840.10008.1.2.4.9") or transfer_syntax.startswith(
        "1.2.840.10008.1.2.4.20"
    )
    jpeg_frame: list[bytes] = []  # the fragments of the JPEG frame being read (a frame may span several)
    for number, (begin, end) in enumerate(_fragments(data, position + 12), start=1):
        if transfer_syntax in _JPEG_SYNTAXES:
            if jpeg_frame and data.startswith(b"\xff\xd8", begin, end):
                _check_jpeg_frame(b"".join(jpeg_frame))
                jpeg_frame = []
            jpeg_frame.append(data[begin:end])
        siz = _jpeg2000_siz(data, begin, end)
        frame = frame_header(data, begin, end) if siz is None else None
        size = _siz_size(siz) if siz is not None else (frame.rows, frame.columns) if frame is not None else None
        if size is None:
            if jpeg2000 and number == 1:
                raise InvalidDicomImageError(
                    "DICOM JPEG 2000 pixel data must start with a codestream (SOC and SIZ markers); it does not"
                )
            continue
        if size != (rows, columns):
            raise InvalidDicomImageError(
                f"DICOM pixel data fragment {number} holds a {size[1]}x{size[0]} codestream (columns x rows) but the "
                f"header says Columns {columns}, Rows {rows}; refused before decoding"
            )
        if frame is not None and frame.components != samples_per_pixel:
            raise InvalidDicomImageError(
                f"DICOM pixel data fragment {number} holds a codestream of {frame.components} components but the "
                f"header says SamplesPerPixel {samples_per_pixel}; refused before decoding"
            )
        tiles = _siz_tiles(siz) if jpeg2000 and siz is not None else None
        if tiles is not None and tiles > MAX_JPEG2000_TILES:
            raise InvalidDicomImageError(
                f"DICOM pixel data fragment {number} splits its image into {tiles} JPEG 2000 tiles; at most "
                f"{MAX_JPEG2000_TILES} are accepted; refused before decoding"
            )
    if jpeg_frame:
        _check_jpeg_frame(b"".join(jpeg_frame))


def _check_jpeg_frame(codestream: bytes) -> None:
    try:
        check_jpeg_structure(codestream, "a JPEG frame of the DICOM pixel data")
    except JpegStructureError as error:
        raise InvalidDicomImageError(str(error)) from None


def _fragments(data: bytes, position: int) -> Iterator[tuple[int, int]]:
    """Where the fragments of encapsulated pixel data starting at `position` (the Basic Offset Table item) begin and
    end in `data`: the checks below read them in place, never copying one."""
    first = True
    while position + 8 <= len(data):
        tag, length = data[position : position + 4], int.from_bytes(data[position + 4 : position + 8], "little")
        if tag == _SEQUENCE_DELIMITER_TAG:
            return
        if tag != _ITEM_TAG:
            raise UndecodableDicomError("DICOM encapsulated pixel data has an element that is not an item")
        start = position + 8
        if not first:
            yield start, min(start + length, len(data))
        first = False  # the first item is the Basic Offset Table
        position = start + length


def _jpeg2000_siz(data: bytes, begin: int, end: int) -> bytes | None:
    """The first 40 bytes of the JPEG 2000 codestream (SOC, then SIZ) that the fragment starts with, bare or in a JP2
    file (which OpenJPEG also decodes: its codestream is in a box); None if it starts with neither."""
    start = begin
    if data.startswith(_JP2_SIGNATURE, begin, end):
        start = data.find(_JPEG2000_SOC_SIZ, begin, end)
    head = data[start : min(start + 40, end)] if start >= 0 else b""
    return head if head[:4] == _JPEG2000_SOC_SIZ and len(head) == 40 else None


def _siz_size(siz: bytes) -> tuple[int, int]:
    """(rows, columns) of a JPEG 2000 image, from its SIZ."""
    width, height, x_offset, y_offset = (int.from_bytes(siz[i : i + 4], "big") for i in (8, 12, 16, 20))
    return height - y_offset, width - x_offset


def _siz_tiles(siz: bytes) -> int | None:
    """How many tiles a JPEG 2000 SIZ declares (image and tile sizes and offsets); None when malformed."""
    width, height, _, _, tile_width, tile_height, tile_x, tile_y = (
        int.from_bytes(siz[i : i + 4], "big") for i in range(8, 40, 4)
    )
    if tile_width == 0 or tile_height == 0 or width <= tile_x or height <= tile_y:
        return None  # malformed: OpenJPEG refuses it
    return -(-(width - tile_x) // tile_width) * -(-(height - tile_y) // tile_height)
