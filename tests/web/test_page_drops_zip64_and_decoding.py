"""Browser review 63, in headless Chromium against the real service: a slow dropped folder no longer replaces the choice
made after it, a dropped file that cannot be read is named, a patient CD's viewer icons are left out beside its DICOM
images, PNG gamma is not applied, Zip64 archives are read, and a DICOM file the server refuses is not decoded whole;
browser review 64: a PNG's alpha channel or transparent colour is not drawn.

Headless Chromium cannot drop a folder that is slow to list or holds an unreadable file: those drops are made of
FileSystemEntry look-alikes, whose files are real."""

from __future__ import annotations

import io
import struct
import zipfile
from pathlib import Path
from unittest import mock

import numpy as np
from PIL import Image, PngImagePlugin
from playwright.sync_api import Page, expect
from pydicom.uid import DeflatedExplicitVRLittleEndian

from tests.conftest import TUMOR_SERIES, TUMOR_SLICE
from tests.dicom.builders import mr_series, multiframe_secondary_capture, to_bytes, tumor_channels
from tests.security.corpus import png_chunk
from tests.web.canvas_pixels import canvas_rgba
from tests.web.test_page_series_answers import RESULT_TIMEOUT_MS, upload, write_series
from tests.web.test_page_series_drawing import drawn_slice

# A drop of look-alike entries: `files` maps a path in the dropped folder to the bytes of a real file, or to None for
# one that cannot be read; the folder lists them after `delay_ms`.
DROP_ENTRIES = """async ({ folder, files, delayMs }) => {
    const entry = (path, bytes) => ({
        isFile: true, isDirectory: false, fullPath: `/${folder}/${path}`,
        file: (ok, fail) => (bytes === null
            ? fail(new DOMException("A requested file or directory could not be found", "NotFoundError"))
            : ok(new File([new Uint8Array(bytes)], path.split("/").pop()))),
    });
    let listed = false;
    const directory = {
        isFile: false, isDirectory: true, fullPath: `/${folder}`,
        createReader: () => ({
            readEntries: (ok) => {
                const batch = listed ? [] : Object.entries(files).map(([path, bytes]) => entry(path, bytes));
                listed = true;
                setTimeout(() => ok(batch), batch.length ? delayMs : 0);
            },
        }),
    };
    const transfer = new DataTransfer();
    Object.defineProperty(transfer, "items", { value: [{ kind: "file", webkitGetAsEntry: () => directory }] });
    document.querySelector("#drop-zone").dispatchEvent(
        new DragEvent("drop", { dataTransfer: transfer, bubbles: true, cancelable: true }));
}"""


def drop_entries(page: Page, folder: str, files: dict[str, bytes | None], delay_ms: int = 0) -> None:
    page.evaluate(
        DROP_ENTRIES,
        {
            "folder": folder,
            "files": {path: None if data is None else list(data) for path, data in files.items()},
            "delayMs": delay_ms,
        },
    )


def test_a_slow_dropped_folder_does_not_replace_the_choice_made_after_it(page: Page, live_server: str) -> None:
    """F1: a folder whose listing took 3 s, then a file dropped at once: the file's result showed, then the folder's
    replaced it, with no word; nothing said the folder was being read meanwhile."""
    page.goto(live_server)

    drop_entries(page, "patientA", {"A_1.jpg": TUMOR_SERIES[0].read_bytes()}, delay_ms=1500)
    expect(page.locator("#status")).to_have_text("Reading the files…")
    drop_entries(page, "later", {"B_only.jpg": TUMOR_SLICE.read_bytes()})

    expect(page.locator("#file-name")).to_have_text("Selected: B_only.jpg", timeout=RESULT_TIMEOUT_MS)
    page.wait_for_timeout(3000)  # the folder's listing is long over
    expect(page.locator("#file-name")).to_have_text("Selected: B_only.jpg")
    expect(page.locator("#error")).to_be_hidden()


def test_a_dropped_file_that_cannot_be_read_is_named(page: Page, live_server: str) -> None:
    """F2: one entry of a dropped folder failing to read (moved, a network drive gone) left the page without any
    word: no status, no error, an uncaught promise error in the console."""
    page.goto(live_server)
    slices = {f"slice_{index}.jpg": path.read_bytes() for index, path in enumerate(TUMOR_SERIES[:2], start=1)}

    drop_entries(page, "patient", {**slices, "slice_3.jpg": None})

    expect(page.locator("#error-title")).to_have_text(
        "A dropped file or folder cannot be read. Copy the folder to this computer's disk, or choose it with the "
        "folder button."
    )
    expect(page.locator("#error-detail")).to_contain_text("/patient/slice_3.jpg cannot be read")
    expect(page.locator("#progress-row")).to_be_hidden()


def test_a_patient_cd_s_viewer_icons_are_left_out_beside_its_dicom_images(
    page: Page, live_server: str, tmp_path: Path
) -> None:
    """F4: a CD chosen whole was uploaded, then refused as DICOM mixed with PNG/JPEG images, for its viewer's icons,
    which were not named."""
    images = write_series(mr_series(tumor_channels()), tmp_path)
    icons = {"viewer_icon.png": io.BytesIO(), "logo.jpg": io.BytesIO()}
    for name, data in icons.items():
        Image.new("RGB", (16, 16), (200, 30, 30)).save(data, format="PNG" if name.endswith("png") else "JPEG")
        (tmp_path / name).write_bytes(data.getvalue())
    page.goto(live_server)

    answer = upload(page, [*images, *(tmp_path / name for name in icons)])

    assert len(answer["slices"]) == 3
    expect(page.locator("#error")).to_be_hidden()
    expect(page.locator("#file-name")).to_have_text(
        "Selected: 3 files, IM0000 … IM0002 (left out, PNG, JPEG or TIFF images beside the DICOM images: logo.jpg, "
        "viewer_icon.png)"
    )


def test_a_png_with_a_gamma_chunk_is_drawn_with_its_stored_values(page: Page, live_server: str, tmp_path: Path) -> None:
    """F5: a gAMA chunk of 1.0 drew the slice brighter (mean grey 96 for 42) than the values the server analyses,
    which ignores the chunk: drawn, it is the same slice as without it."""
    stored = (np.arange(64 * 64).reshape(64, 64) % 200 + 20).astype(np.uint8)
    info = PngImagePlugin.PngInfo()
    info.add(b"gAMA", struct.pack(">I", 100_000))  # gamma 1.0: Chromium brightens it for a 2.2 display
    plain, with_gamma = tmp_path / "plain.png", tmp_path / "with_gamma.png"
    Image.fromarray(stored).save(plain)
    Image.fromarray(stored).save(with_gamma, pnginfo=info)
    page.goto(live_server)
    drawn = []
    for path in (plain, with_gamma):
        upload(page, [path])
        drawn.append(drawn_slice(page))

    assert drawn[0] == drawn[1]


def with_chunk(png: bytes, kind: bytes, data: bytes) -> bytes:
    """`png` with a chunk of `kind` inserted right after its header chunk (IHDR: 8 + 25 bytes in)."""
    return png[:33] + png_chunk(kind, data) + png[33:]


def see_through_pngs(path: Path) -> list[tuple[Path, Path]]:
    """Pairs of PNGs of the same stored colours: one opaque, one whose alpha channel or transparent colour (tRNS)
    hides part of it. The server drops alpha (`app.imaging`), so the page must draw both alike."""
    colours = np.asarray(Image.open(TUMOR_SLICE).convert("RGB").resize((64, 64)))
    alpha = np.full((64, 64), 255, np.uint8)
    alpha[:, :32] = 0  # the left half, where the tumor lies, fully transparent
    grey = colours[:, :, 1]
    palette = Image.fromarray(colours).quantize(16)
    images = {
        "rgba": (Image.fromarray(colours), Image.fromarray(np.dstack([colours, alpha]), "RGBA"), {}),
        "half_alpha_rgba": (Image.fromarray(colours), Image.fromarray(np.dstack([colours, alpha // 2 + 64])), {}),
        "grey_alpha": (Image.fromarray(grey), Image.fromarray(np.dstack([grey, alpha]), "LA"), {}),
        "grey_transparent_colour": (Image.fromarray(grey), Image.fromarray(grey), {"transparency": int(grey[32, 16])}),
        "palette_4_bit_transparent": (palette.convert("RGB"), palette, {"transparency": 3, "bits": 4}),
    }
    pairs = []
    for name, (opaque, see_through, options) in images.items():
        opaque_path, see_through_path = path / f"{name}_opaque.png", path / f"{name}.png"
        opaque.save(opaque_path)
        see_through.save(see_through_path, **options)
        if name == "rgba":  # a suggested palette too, which is not the colours of an RGBA image
            see_through_path.write_bytes(with_chunk(see_through_path.read_bytes(), b"PLTE", bytes(range(48))))
        assert (
            Image.open(see_through_path).info.get("transparency") is not None
            or "A" in Image.open(see_through_path).mode
        )
        pairs.append((opaque_path, see_through_path))
    return pairs


def test_a_png_with_alpha_or_a_transparent_colour_is_drawn_with_its_stored_colours(
    page: Page, live_server: str, tmp_path: Path
) -> None:
    """Browser review 64 F4: a PNG whose left half had alpha 0 was drawn black there, the tumor under it hidden, while
    the server analysed (and answered for) the stored colours; alpha 128 was drawn at half brightness."""
    page.goto(live_server)
    for opaque, see_through in see_through_pngs(tmp_path):
        upload(page, [opaque])
        expected = canvas_rgba(page)[..., :3]
        upload(page, [see_through])
        assert np.array_equal(canvas_rgba(page)[..., :3], expected), see_through.name


def zip64_archive(path: Path, entries: dict[str, bytes]) -> Path:
    """A zip whose end record and entry sizes are in their Zip64 forms (as `zip -fz` writes), small as it is."""
    with mock.patch.object(zipfile, "ZIP64_LIMIT", 0), zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    assert b"PK\x06\x06" in path.read_bytes()  # the Zip64 end record
    return path


def test_a_zip64_archive_is_read(page: Page, live_server: str, tmp_path: Path) -> None:
    """F6: a 210 KB zip written by `zip -fz` was refused as "zip64 archives are not supported; zip fewer files"."""
    archive = zip64_archive(
        tmp_path / "series.zip",
        {f"patient/slice_{index}.jpg": path.read_bytes() for index, path in enumerate(TUMOR_SERIES)},
    )
    page.goto(live_server)

    answer = upload(page, [archive])

    assert [result["ok"] for result in answer["results"]] == [True] * len(TUMOR_SERIES)
    expect(page.locator("#slice-table tbody tr td:nth-child(2)")).to_have_text(
        [f"slice_{index}.jpg" for index in range(len(TUMOR_SERIES))]
    )


def test_a_dicom_file_of_more_pixels_than_the_server_takes_is_left_undrawn(page: Page, live_server: str) -> None:
    """F3: a deflated file of 2048 frames of 256 x 256 (212 KB; twice the server's MAX_DICOM_PIXELS) was inflated and
    decoded whole, +700 MiB and seconds of a frozen tab, for a file the server refuses."""
    image = np.zeros((256, 256), np.uint8)
    image[100:150, 100:150] = 200
    dataset = multiframe_secondary_capture([image] * 2048)
    dataset.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    data = to_bytes(dataset)
    assert len(data) < 1_000_000
    page.goto(live_server)

    drawn = page.evaluate(
        """async (bytes) => {
            const { readDicom } = await import("/static/formats.js");
            const header = await readDicom(new Uint8Array(bytes).buffer);
            return { frameCount: header.frameCount, frames: header.frames.length };
        }""",
        list(data),
    )

    assert drawn == {"frameCount": 2048, "frames": 0}
