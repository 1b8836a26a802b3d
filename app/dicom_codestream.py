"""The sizes compressed (encapsulated) pixel data declares, checked before a decoder allocates them.

A JPEG, JPEG-LS or JPEG 2000 decoder allocates the image its codestream declares, whatever the DICOM header says:
`check_codestreams` walks the pixel data's fragments and refuses a codestream whose size is not Rows x Columns (a
JPEG 2000 one also inside a JP2 file wrapper, which OpenJPEG decodes as well).
Failures are `app.errors.ServiceError`s; nothing here logs.
"""

from __future__ import annotations

from collections.abc import Iterator

from pydicom.uid import UID

from app.errors import InvalidDicomImageError, UndecodableDicomError

UNDEFINED_LENGTH = 0xFFFFFFFF
_ITEM_TAG, _SEQUENCE_DELIMITER_TAG = b"\xfe\xff\x00\xe0", b"\xfe\xff\xdd\xe0"
_JPEG_FRAME_MARKERS = frozenset({*range(0xC0, 0xC4), *range(0xC5, 0xC8), *range(0xC9, 0xCC), *range(0xCD, 0xD0), 0xF7})
"""SOF markers of JPEG (baseline, extended, progressive, lossless) and SOF55 of JPEG-LS: all hold height, width."""
_JPEG2000_SOC_SIZ = b"\xff\x4f\xff\x51"
_JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"
MAX_JPEG2000_TILES = 4096
"""OpenJPEG keeps about 9 KB per tile: a 512x512 codestream of 3x3-pixel tiles (29,241 of them) took 277 MiB that
no budget counted. Real MR images are one tile, or a few hundred on very large images."""


def check_codestreams(data: bytes, position: int, transfer_syntax: UID, rows: int, columns: int) -> None:
    """Refuse a compressed frame whose codestream declares another size than Rows x Columns.

    The decoders allocate what the codestream says: a header of 64x64 over a 16384x16384 JPEG 2000 codestream
    would take 512 MiB before pydicom noticed the mismatch.
    """
    if int.from_bytes(data[position + 8 : position + 12], "little") != UNDEFINED_LENGTH:
        return  # not encapsulated after all: pydicom refuses it when decoding
    jpeg2000 = transfer_syntax.startswith("1.2.840.10008.1.2.4.9") or transfer_syntax.startswith(
        "1.2.840.10008.1.2.4.20"
    )
    for number, fragment in enumerate(_fragments(data, position + 12), start=1):
        size = _codestream_size(fragment)
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
        tiles = _jpeg2000_tiles(fragment) if jpeg2000 else None
        if tiles is not None and tiles > MAX_JPEG2000_TILES:
            raise InvalidDicomImageError(
                f"DICOM pixel data fragment {number} splits its image into {tiles} JPEG 2000 tiles; at most "
                f"{MAX_JPEG2000_TILES} are accepted; refused before decoding"
            )


def _fragments(data: bytes, position: int) -> Iterator[memoryview]:
    """The fragments of encapsulated pixel data starting at `position` (the Basic Offset Table item), without
    copying them."""
    view = memoryview(data)
    first = True
    while position + 8 <= len(data):
        tag, length = data[position : position + 4], int.from_bytes(data[position + 4 : position + 8], "little")
        if tag == _SEQUENCE_DELIMITER_TAG:
            return
        if tag != _ITEM_TAG:
            raise UndecodableDicomError("DICOM encapsulated pixel data has an element that is not an item")
        start = position + 8
        if not first:
            yield view[start : start + length]
        first = False  # the first item is the Basic Offset Table
        position = start + length


def _jpeg2000_siz(fragment: memoryview) -> bytes | None:
    """The first 40 bytes of the JPEG 2000 codestream (SOC, then SIZ) that `fragment` starts with, bare or in a JP2
    file (which OpenJPEG also decodes: its codestream is in a box); None if it starts with neither."""
    head = bytes(fragment[:40])
    if head.startswith(_JP2_SIGNATURE):
        data = bytes(fragment)
        start = data.find(_JPEG2000_SOC_SIZ)
        head = data[start : start + 40] if start >= 0 else b""
    return head if head[:4] == _JPEG2000_SOC_SIZ and len(head) == 40 else None


def _jpeg2000_tiles(fragment: memoryview) -> int | None:
    """How many tiles the JPEG 2000 codestream of `fragment` declares (SIZ: image and tile sizes and offsets)."""
    siz = _jpeg2000_siz(fragment)
    if siz is None:
        return None
    width, height, _, _, tile_width, tile_height, tile_x, tile_y = (
        int.from_bytes(siz[i : i + 4], "big") for i in range(8, 40, 4)
    )
    if tile_width == 0 or tile_height == 0 or width <= tile_x or height <= tile_y:
        return None  # malformed: OpenJPEG refuses it
    return -(-(width - tile_x) // tile_width) * -(-(height - tile_y) // tile_height)


def _codestream_size(fragment: memoryview) -> tuple[int, int] | None:
    """(rows, columns) a JPEG 2000 (SIZ) or JPEG / JPEG-LS (SOF) codestream starting `fragment` declares."""
    siz = _jpeg2000_siz(fragment)
    if siz is not None:
        width, height, x_offset, y_offset = (int.from_bytes(siz[i : i + 4], "big") for i in (8, 12, 16, 20))
        return height - y_offset, width - x_offset
    head = bytes(fragment[:4])
    if head[:2] != b"\xff\xd8":
        return None
    data = bytes(fragment)  # one copy, for find()
    position = 2
    while position + 4 <= len(data):
        if data[position] != 0xFF:  # stray bytes between segments: libjpeg skips to the next marker, so do we
            position = data.find(b"\xff", position)
            if position < 0:
                return None
            continue
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            position += 2
            continue
        if marker in _JPEG_FRAME_MARKERS and position + 9 <= len(data):
            height = int.from_bytes(data[position + 5 : position + 7], "big")
            width = int.from_bytes(data[position + 7 : position + 9], "big")
            return height, width
        if marker == 0xDA:  # start of scan before any frame header
            return None
        position += 2 + int.from_bytes(data[position + 2 : position + 4], "big")
    return None
