"""A PNG checked whole before it is decoded; a 16-bit one handed to OpenCV's libpng with only the chunks it needs.

libpng prints its warnings and errors on the process's standard error, past Python's logging (`libpng warning:
iCCP: too short`, `libpng error: IDAT: incorrect data check`): a client's broken file put lines that are not JSON into
the service's log, at will. What libpng would complain about is found here first and refused with a reason, and the
ancillary chunks (colour profiles, text, times, a suggested palette, transparency: nothing the models read; an alpha
channel is dropped anyway) are left out (`png_for_libpng`). Pillow decodes every other PNG, and says nothing on
stderr, but fills the rows a stream cut short does not hold with black (a tumor slice cut at its
tumor would be answered "no tumor"): it is handed one only once the same whole-file check passed (`check_png`).
Before either, the header is read by the chunk order `check_png_chunk_order` checks (IHDR first, a palette before
the image data, one frame at most).
"""

from __future__ import annotations

import math
import zlib

import numpy as np

from app.errors import InvalidSliceError, UndecodableImageError

SIGNATURE = b"\x89PNG\r\n\x1a\n"
STORED_SAMPLES = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
"""Samples per pixel of each colour type as stored: grey, RGB, palette (one index), grey + alpha, RGBA."""
BIT_DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}
"""The bit depths PNG allows for each colour type."""
ADAM7_PASSES = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
"""An interlaced image's seven passes: first column, first row, column step, row step."""
MAX_FILTER_TYPE = 4
KEPT_CHUNKS = (b"IHDR", b"IDAT", b"IEND")
"""The chunks whose checksums are checked, those libpng gets (header and image data, written again, and the end)."""


MOST_CHUNKS, BYTES_PER_CHUNK = 65_536, 1024
"""A PNG may hold `MOST_CHUNKS` chunks and one more per `BYTES_PER_CHUNK` of its bytes: encoders write image data in
chunks of 8 KiB or more (a streaming one, a row at a time, still fits), and a 20 MB file of 1.7 million empty ones
cost 3.4 s to walk here, and Pillow 3 s for an 8-bit one."""


class CorruptPngError(ValueError):
    """What is wrong with a PNG, in words for the client."""


def _most_chunks(data: bytes) -> int:
    return MOST_CHUNKS + len(data) // BYTES_PER_CHUNK


def _too_many_chunks(most: int, data: bytes) -> CorruptPngError:
    return CorruptPngError(f"it holds more than {most} chunks, {len(data)} bytes (encoders write far fewer)")


def png_for_libpng(data: bytes) -> bytes:
    """The file's header and image rows, once found whole (`check_png`), written again as a PNG of three chunks:
    libpng reads the image data in row-sized pieces and holds the stream to the window its header declares, where
    Python's zlib, inflating in one piece, does not, so libpng is handed a stream made here.

    Raises
    ------
    CorruptPngError
        What libpng would have said on stderr (a truncated or damaged file, a header it refuses), or a PNG that is
        not 16-bit.
    """
    header, rows = _header_and_rows(data)
    if header[8] != 16:
        raise CorruptPngError(f"its header's bit depth {header[8]} is not a 16-bit PNG's")
    return SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(rows, 1)) + _chunk(b"IEND", b"")


def check_png(data: bytes) -> None:
    """Refuse a PNG that is not whole: a chunk checksum that does not match, no end chunk, a zlib stream that holds
    fewer or more bytes than the image's rows or does not end there, an unknown filter type, a critical chunk PNG
    does not define, the further frames of an animation (fdAT).

    Raises
    ------
    CorruptPngError
        What is wrong, in words for the client.
    """
    _header_and_rows(data)


def _header_and_rows(data: bytes) -> tuple[bytes, bytes]:
    """The header (IHDR's 13 bytes) and the inflated rows of a PNG found whole (`check_png`)."""
    header, image_data, previous = None, [], b""
    for kind, start, end in _chunks(data):
        if kind == b"IHDR":
            if header is not None:
                raise CorruptPngError("it holds a second header (IHDR)")
            header = data[start + 8 : end - 4]
        elif kind == b"IDAT":
            if image_data and previous != b"IDAT":
                raise CorruptPngError("its image data is split by other chunks (IDAT chunks must follow each other)")
            image_data.append(data[start + 8 : end - 4])
        elif kind == b"fdAT":  # the animation's further frames: which one is the slice?
            raise CorruptPngError("it holds further animation frames (fdAT chunks): a PNG of one slice holds one image")
        elif kind[0] & 0x20 == 0 and kind not in (b"PLTE", b"IEND"):  # an upper-case first letter: critical
            raise CorruptPngError(f"it holds a critical chunk PNG does not define ({kind.decode('ascii')})")
        previous = kind
    if header is None or len(header) != 13:
        raise CorruptPngError("its header (IHDR) must be 13 bytes")
    if not image_data:
        raise CorruptPngError("it holds no image data (IDAT)")
    return header, _checked_rows(header, b"".join(image_data))


def _chunk(kind: bytes, content: bytes) -> bytes:
    return len(content).to_bytes(4, "big") + kind + content + zlib.crc32(kind + content).to_bytes(4, "big")


def _chunks(data: bytes) -> list[tuple[bytes, int, int]]:
    """Each chunk's type, start and end, up to IEND; the checksum checked on the chunks that are kept."""
    chunks, position = [], len(SIGNATURE)
    most = _most_chunks(data)
    while True:
        if len(chunks) == most:
            raise _too_many_chunks(most, data)
        if position + 12 > len(data):
            raise CorruptPngError("the file ends before its last chunk (IEND): it is truncated")
        length = int.from_bytes(data[position : position + 4], "big")
        kind = data[position + 4 : position + 8]
        end = position + 12 + length
        if not kind.isalpha():
            raise CorruptPngError(f"a chunk at byte {position} has no valid type")
        if end > len(data):
            raise CorruptPngError(f"the file ends inside its {kind.decode('ascii')} chunk: it is truncated")
        if kind in KEPT_CHUNKS and zlib.crc32(data[position + 4 : end - 4]) != int.from_bytes(
            data[end - 4 : end], "big"
        ):
            raise CorruptPngError(f"its {kind.decode('ascii')} chunk is damaged (its checksum does not match)")
        chunks.append((kind, position, end))
        if kind == b"IEND":
            if length:
                raise CorruptPngError("its end chunk (IEND) holds data; it must be empty")
            return chunks
        position = end


def _checked_rows(header: bytes, compressed: bytes) -> bytes:
    """The image's rows, once the zlib stream is found to inflate to exactly the rows the header calls for, each
    starting with a known filter type."""
    width, height = int.from_bytes(header[0:4], "big"), int.from_bytes(header[4:8], "big")
    depth, colour, compression, filtering, interlace = header[8:13]
    if width == 0 or height == 0:
        raise CorruptPngError(f"its header says {width}x{height} pixels")
    if depth not in BIT_DEPTHS.get(colour, ()):
        raise CorruptPngError(f"its header's bit depth {depth} with colour type {colour} is not one PNG defines")
    if compression != 0 or filtering != 0 or interlace not in (0, 1):
        raise CorruptPngError("its header names a compression, filter or interlace method PNG does not define")
    pixel_bits = depth * STORED_SAMPLES[colour]
    passes = ADAM7_PASSES if interlace else ((0, 0, 1, 1),)
    row_sizes = []  # (rows, bytes per row) of each pass that holds pixels
    for first_column, first_row, column_step, row_step in passes:
        columns = math.ceil((width - first_column) / column_step) if width > first_column else 0
        rows = math.ceil((height - first_row) / row_step) if height > first_row else 0
        if columns and rows:
            row_sizes.append((rows, 1 + math.ceil(columns * pixel_bits / 8)))
    expected = sum(rows * size for rows, size in row_sizes)
    inflater = zlib.decompressobj()
    try:
        rows_data = inflater.decompress(compressed, expected + 1)
        left = inflater.decompress(inflater.unconsumed_tail, 1) if not inflater.eof else b""
    except zlib.error as error:
        raise CorruptPngError(f"its image data is damaged ({error})") from None
    if len(rows_data) < expected:
        raise CorruptPngError(f"its image data holds {len(rows_data)} of the {expected} bytes its size calls for")
    if len(rows_data) > expected or left:
        raise CorruptPngError("its image data goes on past the rows its size calls for")
    if not inflater.eof:
        raise CorruptPngError("its image data is cut short (the compressed stream does not end)")
    if inflater.unused_data:
        raise CorruptPngError("its image data has bytes after the end of the compressed stream")
    filter_types, offset = [], 0
    for rows, size in row_sizes:
        filter_types.append(np.frombuffer(rows_data, np.uint8, rows * size, offset)[::size])
        offset += rows * size
    highest = int(np.concatenate(filter_types).max())
    if highest > MAX_FILTER_TYPE:
        raise CorruptPngError(f"a row of its image data has filter type {highest} (PNG defines 0 to 4)")
    return rows_data


MAX_PNG_CHUNKS_BEFORE_IMAGE = 1000
"""Chunks a PNG may hold before its image data. Encoders write a handful (header, palette, colour and text
chunks); each chunk costs a step here and in Pillow, and a 1.4 MB file of 120,000 empty chunks held a core for two
minutes before this limit (the walk was quadratic then, too)."""


def check_png_chunk_order(data: bytes) -> None:
    """Refuse a PNG that breaks the chunk order its header is read by: IHDR first (else the header read here, and
    the 16-bit path, would not apply), a palette image's PLTE before its image data (else Pillow makes colours
    up, and the models would read pixels that are not in the file), at most `MAX_PNG_CHUNKS_BEFORE_IMAGE`
    chunks between IHDR and the image data, and an animation (acTL) of one frame at most, its image data that frame
    (an fcTL before it). Walks the chunks once,
    stopping at the first IDAT."""
    if len(data) < 29 or data[12:16] != b"IHDR":
        raise UndecodableImageError("PNG file cannot be decoded: its first chunk must be IHDR (the image header)")
    palette, animated, first_frame = False, False, False
    position = 20 + int.from_bytes(data[8:12], "big")  # after the signature and IHDR
    for _ in range(MAX_PNG_CHUNKS_BEFORE_IMAGE + 1):  # the chunks allowed, then the image data
        if position + 8 > len(data):
            break  # no image data: the decoder says so
        kind = data[position + 4 : position + 8]
        if kind == b"IDAT":
            break
        palette = palette or kind == b"PLTE"
        if kind == b"acTL":  # found as a chunk, not as bytes anywhere (text can hold "IDAT")
            _refuse_animated_png(int.from_bytes(data[position + 8 : position + 12], "big"))
            animated = True
        first_frame = first_frame or kind == b"fcTL"
        position += 12 + int.from_bytes(data[position : position + 4], "big")
    else:
        raise UndecodableImageError(
            f"PNG file cannot be decoded: more than {MAX_PNG_CHUNKS_BEFORE_IMAGE} chunks between its header and its "
            "image data (encoders write a handful)"
        )
    if animated and not first_frame:
        # Its image data is then no frame of the animation: browsers show the frame, decoders here the image data
        # (the page would show a tumor where the models read a tumor-free slice).
        raise InvalidSliceError(
            "PNG must hold one image (one slice); this animated PNG's default image is not its frame, so it holds two"
        )
    if data[25] == 3 and not palette:
        raise UndecodableImageError(
            "PNG file cannot be decoded: a palette image (colour type 3) must hold a PLTE chunk before its image data"
        )


def _refuse_animated_png(frames: int) -> None:
    """An animated PNG (an acTL chunk before the image data) of several frames is refused, as a TIFF of several
    pages is: which frame is the slice? (Decoders read its first frame and say nothing.)"""
    if frames > 1:
        raise InvalidSliceError(f"PNG must hold one frame (one slice); this animated PNG holds {frames} frames")
