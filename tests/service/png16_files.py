"""16-bit PNG files built chunk by chunk, whole or broken in the ways libpng complains about on stderr."""

from __future__ import annotations

import struct
import zlib

import numpy as np

from app.png_data import ADAM7_PASSES, SIGNATURE
from tests.security.corpus import png_chunk


def samples(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 65536, shape, dtype=np.uint16)


def header(image: np.ndarray, interlace: int = 0) -> bytes:
    colour = 0 if image.ndim == 2 else {3: 2, 4: 6}[image.shape[2]]
    return png_chunk(b"IHDR", struct.pack(">IIBBBBB", image.shape[1], image.shape[0], 16, colour, 0, 0, interlace))


def rows(image: np.ndarray, interlace: int = 0, filter_type: int = 0) -> bytes:
    """The image's rows as PNG stores them before compression: filter type 0 (none) and big-endian samples; with
    `interlace`, pass by pass (Adam7). `filter_type` is written as is, data unfiltered (to break a file)."""
    big_endian = image.astype(">u2")
    passes = ADAM7_PASSES if interlace else ((0, 0, 1, 1),)
    return b"".join(
        bytes([filter_type]) + big_endian[row, first_column::column_step].tobytes()
        for first_column, first_row, column_step, row_step in passes
        for row in range(first_row, image.shape[0], row_step)
        if image.shape[1] > first_column
    )


def png16(
    image: np.ndarray,
    interlace: int = 0,
    before_data: bytes = b"",
    raw: bytes | None = None,
    compressed: bytes | None = None,
) -> bytes:
    """A 16-bit PNG of `image` (HxW grey, HxWx3 RGB, HxWx4 RGBA); `before_data`: chunks between header and data;
    `raw`: the rows to compress instead of the image's; `compressed`: the image data itself."""
    if compressed is None:
        compressed = zlib.compress(rows(image, interlace) if raw is None else raw)
    return SIGNATURE + header(image, interlace) + before_data + png_chunk(b"IDAT", compressed) + png_chunk(b"IEND", b"")


def narrow_window_png() -> bytes:
    """A flat 32x64 RGB 16-bit PNG whose zlib stream was compressed with a 32 KiB window but whose header declares a
    256-byte one: each 385-byte row repeats the one before it, a back-reference past what the header allows (zlib
    and libpng: "invalid distance too far back")."""
    flat = np.full((32, 64, 3), 1000, np.uint16)
    compressed = zlib.compress(rows(flat))
    return png16(flat, compressed=b"\x08\x1d" + compressed[2:])  # CMF 0x08: a 256-byte window; FLG checks it


def broken_png16s() -> dict[str, tuple[bytes, str]]:
    """Broken 16-bit PNGs, each with what the refusal says; libpng said something on stderr of each but the first."""
    image = samples((32, 24, 3))
    whole = png16(image)
    idat = whole.index(b"IDAT") - 4
    compressed = zlib.compress(rows(image))
    damaged = bytearray(compressed)
    damaged[-3] ^= 0xFF  # in the Adler-32 checksum: "incorrect data check"
    return {
        "truncated": (whole[: len(whole) // 2], "truncated"),
        "damaged image data": (
            whole[:idat] + png_chunk(b"IDAT", bytes(damaged)) + png_chunk(b"IEND", b""),
            "its image data is damaged",
        ),
        "checksum of a chunk": (whole[:-1] + bytes([whole[-1] ^ 0xFF]), "its IEND chunk is damaged"),
        "too little image data": (png16(image, raw=rows(image)[:-10]), "bytes its size calls for"),
        "too much image data": (png16(image, raw=rows(image) + b"\x00" * 10), "goes on past the rows"),
        "compressed stream without its end": (
            whole[:idat] + png_chunk(b"IDAT", compressed[:-4]) + png_chunk(b"IEND", b""),
            "the compressed stream does not end",
        ),
        "bytes after the compressed stream": (
            whole[:idat] + png_chunk(b"IDAT", compressed + b"more") + png_chunk(b"IEND", b""),
            "bytes after the end of the compressed stream",
        ),
        "unknown filter type": (png16(image, raw=rows(image, filter_type=9)), "filter type 9"),
        "unknown critical chunk": (png16(image, before_data=png_chunk(b"ABCD", b"x")), "critical chunk PNG does not"),
        # Attack review 53 F6 and F8: what libpng still said on stderr, and a walk over a million empty chunks.
        "data in the end chunk": (whole[:-12] + png_chunk(b"IEND", b"more"), "its end chunk (IEND) holds data"),
        "too many chunks": (
            whole[:idat] + png_chunk(b"IDAT", compressed) + png_chunk(b"IDAT", b"") * 70_000 + png_chunk(b"IEND", b""),
            "chunks,",
        ),
        "image data split": (
            whole[:idat]
            + png_chunk(b"IDAT", compressed[:10])
            + png_chunk(b"tEXt", b"a\x00b")
            + png_chunk(b"IDAT", compressed[10:])
            + png_chunk(b"IEND", b""),
            "split by other chunks",
        ),
    }
