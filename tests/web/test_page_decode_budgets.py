"""Browser review 64, in headless Chromium: the page's own decoding of the slices it draws keeps to what the server
takes. A Deflate TIFF strip or a 16-bit PNG's data is inflated no further than the image needs, a TIFF's strips stop
when its analysis is stopped, a TIFF of more strips or tiles than the page decodes is left undrawn at once, and a
slice past the choice's drawing budget says so."""

from __future__ import annotations

import base64
import re
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image
from playwright.sync_api import Page, expect

from app.settings import Settings
from tests.conftest import TUMOR_FREE_SLICE, TUMOR_SERIES
from tests.web.test_page_series_answers import upload

# Runs `readTiff` or `readPng` of formats.js on `bytes`: what it returned (width, height) or the error it threw.
# `stopAfter`: the strips decoded before `stopped()` says true (null: never).
DECODE = """async ({ reader, base64, stopAfter }) => {
    const formats = await import("/static/formats.js");
    let asked = 0;
    const stopped = () => stopAfter !== null && ++asked > stopAfter;
    try {
        const bytes = Uint8Array.from(atob(base64), (character) => character.charCodeAt(0));
        const image = await formats[reader](bytes.buffer, stopped);
        return { ok: image ? [image.width, image.height] : null, asked };
    } catch (error) {
        const stoppedError = error instanceof formats.DecodeStopped;
        return { error: error.message, stoppedError, asked };
    }
}"""


def decode(page: Page, reader: str, data: bytes, stop_after: int | None = None) -> dict:
    """What `reader` made of `data` in the page (`ok` or `error`), and how often it asked whether to stop."""
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


def test_a_16_bit_png_is_inflated_no_further_than_its_rows(page: Page, live_server: str) -> None:
    """F1: a 64 x 64 16-bit PNG whose data inflated to 256 MiB took the tab +800 MiB for 7 s."""
    bomb = png16_with_data(64, 64, bytes(32 * 2**20))
    whole = png16_with_data(64, 64, bytes(64 * (64 * 2 + 1)))
    page.goto(live_server)

    refused = decode(page, "readPng", bomb)
    drawn = decode(page, "readPng", whole)

    assert refused["error"] == "the PNG's image data goes on past the rows its size calls for"
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


def test_the_page_decodes_no_larger_image_than_the_server_takes(page: Page, live_server: str) -> None:
    """F8: the page decoded images of up to 2^25 pixels, twice the server's MAX_IMAGE_PIXELS: three 33 KB PNGs the
    server refused as too large cost the tab +924 MiB."""
    width, height = 4097, 4096  # one column past the server's 4096 x 4096
    over = png16_with_data(width, height, bytes(height * (width * 2 + 1)))
    page.goto(live_server)

    limit = page.evaluate('async () => (await import("/static/formats.js")).MAX_DRAWN_PIXELS')
    result = decode(page, "readPng", over)

    assert limit <= Settings.model_fields["max_image_pixels"].default < width * height
    assert result["ok"] is None  # left undrawn, not decoded


def test_a_slice_past_the_choice_s_drawing_budget_says_so(page: Page, live_server: str, tmp_path: Path) -> None:
    """F3: past the page's budget for one choice (2^26 pixels), slices were said to be undrawable ("compressed or
    unusual encoding"), like the slices drawn before them; F8: at exactly the budget, one more file was decoded."""
    paths = []
    for index in range(5):  # 4 x 4096 x 4096 is the budget exactly
        image = np.zeros((4096, 4096), np.uint8)
        image[index * 512 : index * 512 + 1024, 1024:2048] = 200  # no two slices the same, once scaled down
        paths.append(tmp_path / f"slice_{index + 1}.png")
        Image.fromarray(image).save(paths[-1])
    page.goto(live_server)

    upload(page, paths)

    page.locator("#slice-slider").fill("4")
    expect(page.locator("#caption")).not_to_contain_text("drawn")
    page.locator("#slice-slider").fill("5")
    told = (
        "not drawn: the page draws at most 67,108,864 pixels of one choice, and the slices before it took them "
        "(choose fewer slices to see it), so the mask is shown on black"
    )
    expect(page.locator("#caption")).to_have_text(
        re.compile(rf"^Slice 5 of 5 \(slice_5\.png\): [^;]+; {re.escape(told)}$")
    )
    expect(page.locator("#slice-canvas")).to_have_attribute("aria-label", re.compile(re.escape(told)))


def test_slices_named_by_a_signed_or_decimal_position_are_sent_in_its_order(
    page: Page, live_server: str, tmp_path: Path
) -> None:
    """F6: slices named pos_<z>mm were sent -2.5, -5.0, ..., then 0.0, 2.5 (the negative ones reversed, -27.5 beside
    0.0), and "1.5" before "1.25": the digit runs were read as unsigned whole numbers."""
    slices = [TUMOR_FREE_SLICE, *TUMOR_SERIES]
    signed = ["pos_-2.5mm.jpg", "pos_-5.0mm.jpg", "pos_0.0mm.jpg", "pos_2.5mm.jpg"]
    decimal = ["s_1.5.jpg", "s_1.25.jpg", "s_1.75.jpg", "s_2.jpg"]
    for folder, names in (("signed", signed), ("decimal", decimal)):
        (tmp_path / folder).mkdir()
        for name, source in zip(names, slices, strict=True):
            (tmp_path / folder / name).write_bytes(source.read_bytes())
    page.goto(live_server)
    names = page.locator("#slice-table tbody tr td:nth-child(2)")

    upload(page, [tmp_path / "signed" / name for name in signed])
    expect(names).to_have_text(["pos_-5.0mm.jpg", "pos_-2.5mm.jpg", "pos_0.0mm.jpg", "pos_2.5mm.jpg"])
    upload(page, [tmp_path / "decimal" / name for name in decimal])
    expect(names).to_have_text(["s_1.25.jpg", "s_1.5.jpg", "s_1.75.jpg", "s_2.jpg"])


def test_a_zip_whose_entries_declare_more_than_one_analysis_takes_is_refused_before_unpacking(
    page: Page, live_server: str, tmp_path: Path
) -> None:
    """F5: a 0.5 MB zip of 25 slices of 20 MiB of zeros was unpacked whole (+356 MiB in the tab), then failed as "could
    not be read ... Choose the files again"; smaller ones were unpacked only to be refused as too large together. Its
    central directory says the sizes first: here 7 x 20 MiB, over the 128 MiB a request takes (each entry holds 1 KB,
    so only a refusal by the declared sizes comes before the upload)."""
    archive = tmp_path / "series.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as writer:
        for index in range(7):
            writer.writestr(f"series/slice_{index + 1}.png", bytes(1000))
    data = bytearray(archive.read_bytes())
    for match in re.finditer(b"PK\x01\x02", bytes(data)):
        data[match.start() + 24 : match.start() + 28] = (20 * 2**20).to_bytes(4, "little")
    archive.write_bytes(bytes(data))
    page.goto(live_server)
    sent = []
    page.on("request", lambda request: sent.append(request.url) if "/v1/predict" in request.url else None)

    page.set_input_files("#file-input", [archive])

    expect(page.locator("#error-title")).to_have_text(
        "7 files, 140.0 MiB together; the service takes at most 128.0 MiB in one analysis."
    )
    expect(page.locator("#error-detail")).to_contain_text("MAX_BATCH_UPLOAD_BYTES")
    assert sent == []


# Counts the DecompressionStreams the page makes: one per Deflate strip of a TIFF it decodes to draw.
COUNT_INFLATES = """
    window.__inflates = 0;
    const Native = DecompressionStream;
    window.DecompressionStream = class extends Native {
        constructor(format) { window.__inflates += 1; super(format); }
    };
"""


def two_page_tiff(rows: int, grey: int) -> bytes:
    """A 64-pixel-wide TIFF in `rows` Deflate strips of one row, of two pages: the server refuses it (a multi-page
    TIFF is no slice), and the page would draw its first page."""
    data = bytearray(grey_tiff(64, rows, [zlib.compress(bytes([grey]) * 64)], rows_per_strip=1))
    first_ifd = struct.unpack("<I", data[4:8])[0]
    ifd = data[first_ifd:]
    data[-4:] = struct.pack("<I", len(data))  # the first page's next-IFD offset: the copy of it appended below
    return bytes(data + ifd)


def test_decoding_stops_once_the_server_refused_every_file(page: Page, live_server: str, tmp_path: Path) -> None:
    """F8: the pictures of a choice were decoded on after a 200 answer that refused every file (three PNGs refused as
    too large cost the tab +924 MiB); the refusal showed only once they were decoded."""
    paths = []
    for index in range(3):
        paths.append(tmp_path / f"slice_{index + 1}.tif")
        paths[-1].write_bytes(two_page_tiff(4000, 50 * (index + 1)))  # 4,000 strips: several seconds each
    page.add_init_script(COUNT_INFLATES)
    page.goto(live_server)

    page.set_input_files("#file-input", paths)

    expect(page.locator("#error")).to_be_visible(timeout=60_000)
    assert page.evaluate("window.__inflates") < 2 * 4000  # not every file's strips
