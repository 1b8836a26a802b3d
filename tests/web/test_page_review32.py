"""The page's fixes from browser review 32: Enhanced MR (multi-frame) slices get their areas in mm² from the
functional groups' Pixel Measures; a signed 8-bit TIFF is drawn with its signed values; a gap's size is said where
it is drawn and on the slice after it; slices.csv places each slice (position, slices missing before it); an empty
zip and a zip inside a zip get their own message; the downloads are named after the series."""

from __future__ import annotations

import csv
import io
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import tifffile
from playwright.sync_api import Page, expect

from tests.dicom.builders import legacy_multiframe, mr_series, to_bytes, tumor_channels
from tests.web.test_page_review31 import drawn_slice
from tests.web.test_page_series_answers import RESULT_TIMEOUT_MS, upload


def slices_csv(page: Page) -> tuple[str, list[dict]]:
    """The downloaded masks zip's name and its slices.csv rows."""
    with page.expect_download(timeout=RESULT_TIMEOUT_MS) as downloaded:
        page.click("#download-masks")
    with zipfile.ZipFile(downloaded.value.path()) as archive:
        rows = list(csv.DictReader(io.StringIO(archive.read("slices.csv").decode())))
    return downloaded.value.suggested_filename, rows


# ------------------------------------------------------------- F1: Enhanced MR's Pixel Spacing in functional groups


def test_enhanced_mr_slices_get_their_area_in_mm2_from_the_functional_groups(
    page: Page, live_server: str, tmp_path: Path
) -> None:
    """An Enhanced MR image keeps Pixel Spacing in the Shared (or Per-frame) Functional Groups' Pixel Measures: the
    page read it at the top level only, so the table, the Slice area line and slices.csv had no mm² at all."""
    enhanced = legacy_multiframe(mr_series(tumor_channels()))
    assert "PixelSpacing" not in enhanced  # only in the functional groups
    (row_mm, column_mm) = enhanced.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing
    # The second frame's own spacing comes first, as the server takes it.
    measures = pydicom.Dataset()
    measures.PixelSpacing = [0.5, 0.5]
    enhanced.PerFrameFunctionalGroupsSequence[1].PixelMeasuresSequence = [measures]
    path = tmp_path / "enhanced.dcm"
    path.write_bytes(to_bytes(enhanced))
    page.goto(live_server)

    answer = upload(page, [path])

    expected = {}
    for item in answer["slices"]:
        spacing = 0.25 if item["frame_number"] == 2 else row_mm * column_mm
        mask = item["prediction"]["mask"]
        expected[item["frame_number"]] = mask["area_pixels"] * spacing if mask else None
    assert any(area for area in expected.values())
    _, rows = slices_csv(page)
    for row in rows:
        frame = int(row["file"].rsplit("frame ", 1)[1])
        if expected[frame] is None:
            assert row["area_mm2"] == "0"
        else:
            assert float(row["area_mm2"]) == expected[frame]
    cells = page.locator("#slice-table tbody tr td:nth-child(6)")
    assert "–" not in cells.all_inner_texts()
    page.locator("#slice-slider").fill("1")
    if rows[0]["area_mm2"] != "0":
        expect(page.locator("#area")).to_contain_text(f"{float(rows[0]['area_mm2']):,.1f} mm²")


# ---------------------------------------------------------------------------------- F5: signed 8-bit TIFF


def test_a_signed_8_bit_tiff_is_drawn_as_the_same_values_stored_in_16_bits(
    page: Page, live_server: str, tmp_path: Path
) -> None:
    """readTiff read 8-bit samples unsigned whatever their SampleFormat: an int8 slice (-64 … 63) was drawn wrapped,
    its background (-64, read as 192) light grey and its brightest tissue black; the server reads it signed."""
    values = (tumor_channels()[0].astype(np.int16) // 2 - 64).clip(-128, 127)
    assert values.min() < 0 < values.max()
    page.goto(live_server)
    drawn = {}
    for dtype in (np.int16, np.int8):
        path = tmp_path / f"slice_{np.dtype(dtype).name}.tif"
        tifffile.imwrite(path, values.astype(dtype), photometric="minisblack")
        upload(page, [path])
        drawn[np.dtype(dtype).name] = drawn_slice(page)

    assert drawn["int8"][:2] == drawn["int16"][:2], "the default window"
    differing = int(np.count_nonzero(np.abs(np.array(drawn["int8"][2]) - np.array(drawn["int16"][2])) > 1))
    assert differing == 0, f"{differing} pixels drawn otherwise than the int16 slice of the same values"
