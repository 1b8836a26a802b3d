"""Browser review 64, in headless Chromium: the page's own decoding of the slices it draws keeps to what the server
takes. A Deflate TIFF strip or a 16-bit PNG's data is inflated no further than the image needs, a TIFF's strips stop
when its analysis is stopped, a TIFF of more strips or tiles than the page decodes is left undrawn at once, and a
slice past the choice's drawing budget says so."""

from __future__ import annotations

import base64
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image
from playwright.sync_api import Page, expect

from app.settings import Settings
from tests.web.test_page_series_answers import upload

# The most seconds a refusal of the page's own may take: the unbounded decodes took 7-60 s (browser review 64).
REFUSED_WITHIN_SECONDS = 3.0

# Runs `readTiff` or `readPng16` of formats.js on `bytes`: what it returned (width, height) or the error it threw.
# `stopAfter`: the strips decoded before `stopped()` says true (null: never).
DECODE = """async ({ reader, base64, stopAfter }) => {
    const formats = await import("/static/formats.js");
    let asked = 0;
    const started = performance.now();
    const seconds = () => (performance.now() - started) / 1000;
    const stopped = () => stopAfter !== null && ++asked > stopAfter;
    try {
        const bytes = Uint8Array.from(atob(base64), (character) => character.charCodeAt(0));
        const image = await formats[reader](bytes.buffer, stopped);
        return { ok: image ? [image.width, image.height] : null, asked, seconds: seconds() };
    } catch (error) {
        const stoppedError = error instanceof formats.DecodeStopped;
        return { error: error.message, stoppedError, asked, seconds: seconds() };
    }
}"""


def decode(page: Page, reader: str, data: bytes, stop_after: int | None = None) -> dict:
    """What `reader` made of `data` in the page (`ok` or `error`), and the `seconds` it took there."""
    return page.evaluate(DECODE, {"reader": reader, "base64": base64.b64encode(data).decode(), "stopAfter": stop_after})


def grey_tiff(
    width: int, height: int, blocks: list[bytes], *, tile: int | None = None, rows_per_strip: int | None = None
) -> bytes:
    """An 8-bit grey little-endian TIFF in Deflate strips (`rows_per_strip`) or square tiles (`tile`) whose data are
    `blocks`, cycled over every strip or tile (as the review's files point many at one stream)."""
    across = -(-width // tile) if tile else 1
    down = -(-height // (tile or rows_per_strip))
    count = across * down
    data = b"".join(blocks)
    starts = np.cumsum([0, *(len(block) for block in blocks)])[:-1]
    offsets = [8 + int(starts[i % len(blocks)]) for i in range(count)]
    sizes = [len(blocks[i % len(blocks)]) for i in range(count)]
    arrays = struct.pack(f"<{count}I", *offsets) + struct.pack(f"<{count}I", *sizes)
    arrays_at = 8 + len(data)
    offsets_tag, sizes_tag = (324, 325) if tile else (273, 279)
    entries = [
        (256, 4, 1, width),
        (257, 4, 1, height),
        (258, 3, 1, 8),
        (259, 3, 1, 8),  # Deflate
        (262, 3, 1, 1),  # BlackIsZero
        (offsets_tag, 4, count, arrays_at if count > 1 else offsets[0]),
        (277, 3, 1, 1),
        (sizes_tag, 4, count, arrays_at + 4 * count if count > 1 else sizes[0]),
        *([(322, 3, 1, tile), (323, 3, 1, tile)] if tile else [(278, 4, 1, rows_per_strip)]),
    ]
    entries.sort()
    ifd = (
        struct.pack("<H", len(entries))
        + b"".join(
            struct.pack("<HHI", tag, kind, number)
            + struct.pack("<I" if kind == 4 else "<HH", *([value] if kind == 4 else [value, 0]))
            for tag, kind, number, value in entries
        )
        + b"\0\0\0\0"
    )
    return b"II*\0" + struct.pack("<I", arrays_at + len(arrays)) + data + arrays + ifd


def png16_with_data(width: int, height: int, raw: bytes) -> bytes:
    """A 16-bit grey PNG whose IDAT holds `raw` deflated (what the rows should be, or far more)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 16, 0, 0, 0, 0)
    idat = zlib.compress(raw, 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_a_deflate_tiff_strip_is_inflated_no_further_than_its_size(page: Page, live_server: str) -> None:
    """F1: a 64 x 64 TIFF (4 KiB of pixels) whose one strip inflates to 256 MiB was inflated whole: 44 s and +1.6 GiB
    in the tab for a file the server refuses in 0.1 s."""
    bomb = grey_tiff(64, 64, [zlib.compress(bytes(32 * 2**20), 9)], rows_per_strip=64)
    page.goto(live_server)

    result = decode(page, "readTiff", bomb)

    assert result["error"] == "a TIFF strip or tile inflates to more than its declared size (4096 bytes)"
    assert result["seconds"] < REFUSED_WITHIN_SECONDS


def test_a_16_bit_png_is_inflated_no_further_than_its_rows(page: Page, live_server: str) -> None:
    """F1: a 64 x 64 16-bit PNG whose data inflated to 256 MiB took the tab +800 MiB for 7 s."""
    bomb = png16_with_data(64, 64, bytes(32 * 2**20))
    whole = png16_with_data(64, 64, bytes(64 * (64 * 2 + 1)))
    page.goto(live_server)

    refused = decode(page, "readPng16", bomb)
    drawn = decode(page, "readPng16", whole)

    assert refused["error"] == "the 16-bit PNG's image data goes on past the rows its size calls for"
    assert refused["seconds"] < REFUSED_WITHIN_SECONDS
    assert drawn["ok"] == [64, 64]


def test_a_tiff_s_strips_are_decoded_only_until_its_analysis_is_stopped(page: Page, live_server: str) -> None:
    """F1: after Cancel or a newer choice, the page went on decoding the old choice's strips (54-79 % of a core)."""
    rows = [zlib.compress(bytes([row % 256] * 64)) for row in range(64)]
    tiff = grey_tiff(64, 64, rows, rows_per_strip=1)
    page.goto(live_server)

    stopped = decode(page, "readTiff", tiff, stop_after=3)
    whole = decode(page, "readTiff", tiff)

    assert (stopped["error"], stopped["stoppedError"], stopped["asked"]) == ("the TIFF's decoding was stopped", True, 4)
    assert whole["ok"] == [64, 64]


def test_a_tiff_of_more_tiles_than_the_page_decodes_is_left_undrawn_at_once(page: Page, live_server: str) -> None:
    """F2: a 131 KB TIFF of 16,384 16 x 16 tiles took the page 60 s to decode (the server: 0.6 s), one of 131,044
    tiles minutes; each tile went through its own decompressor and a Blob."""
    tiles = grey_tiff(16 * 65, 16 * 64, [zlib.compress(bytes(256))], tile=16)  # 4,160 tiles
    page.goto(live_server)

    result = decode(page, "readTiff", tiles)

    assert result["error"] == (
        "the TIFF is stored in 4,160 strips or tiles, more than the page decodes to draw it (at most 4,096)"
    )
    assert result["seconds"] < REFUSED_WITHIN_SECONDS
