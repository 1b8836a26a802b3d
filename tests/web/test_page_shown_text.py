"""Attack review 61 F5, in headless Chromium against the real service: a file name or a Series Description holding an
unclosed right-to-left override (U+202E) turned the rest of its line around, and control characters were shown as
they came. The page shows them as U+FFFD, and a long description cut."""

from __future__ import annotations

import csv
import io
import zipfile
from pathlib import Path

from playwright.sync_api import Page, expect

from tests.conftest import TUMOR_SLICE
from tests.dicom.builders import legacy_multiframe, mr_series, tumor_channels
from tests.web.test_page_series_answers import RESULT_TIMEOUT_MS, upload, write_series

OVERRIDE = "\u202e"


def test_overrides_and_controls_from_files_are_not_shown_as_they_are(
    page: Page, live_server: str, tmp_path: Path
) -> None:
    series = mr_series(tumor_channels())
    for dataset in series:
        dataset.SpecificCharacterSet = "ISO_IR 192"
        dataset.SeriesDescription = f"AX FLAIR {OVERRIDE}\x07 " + "x" * 80
    names = [f"IM{index}{OVERRIDE}mcd.dcm" for index in range(len(series))]
    page.goto(live_server)

    upload(page, write_series(series, tmp_path, names))

    selected = page.locator("#file-name")
    expect(selected).to_contain_text("IM0\ufffdmcd.dcm")
    choice = page.locator("#series-choice")
    expect(choice).to_contain_text("“AX FLAIR \ufffd\ufffd xxxx")
    expect(choice).to_contain_text("x…”")
    shown = page.locator("body").inner_text()
    assert OVERRIDE not in shown and "\x07" not in shown


def test_a_raster_name_is_shown_without_its_override_and_a_dicom_name_kept_whole_in_the_csv(
    page: Page, live_server: str, tmp_path: Path
) -> None:
    """Review 64 F5, F6: a PNG's name was still shown as it came in the caption and the table, and a DICOM file's
    shown text (U+FFFD, cut with "…") was written into slices.csv, where the names must match the files."""
    data = TUMOR_SLICE.read_bytes()
    page.goto(live_server)
    pngs = [{"name": f"IM{index}{OVERRIDE}gnp.png", "mimeType": "image/png", "buffer": data} for index in range(2)]
    page.set_input_files("#file-input", pngs)
    expect(page.locator("#result")).to_be_visible(timeout=RESULT_TIMEOUT_MS)
    expect(page.locator("#caption")).to_contain_text("IM0\ufffdgnp.png")
    assert OVERRIDE not in page.locator("body").inner_text()

    series = mr_series(tumor_channels())
    names = [f"IM{index}{OVERRIDE}{'y' * 140}.dcm" for index in range(len(series))]
    page.goto(live_server)
    upload(page, write_series(series, tmp_path, names))
    expect(page.locator("#download-masks")).to_be_visible(timeout=RESULT_TIMEOUT_MS)
    with page.expect_download() as downloaded:
        page.locator("#download-masks").click()
    with zipfile.ZipFile(downloaded.value.path()) as archive:
        rows = list(csv.reader(io.StringIO(archive.read("slices.csv").decode())))
    assert [row[1] for row in rows[1:]] == names


def test_a_long_name_of_a_multi_frame_file_keeps_its_frame_numbers(
    page: Page, live_server: str, tmp_path: Path
) -> None:
    """Review 65 F5: the cut of a long name took ", frame N" with it: every frame had the same label."""
    name = f"{'y' * 140}.dcm"
    page.goto(live_server)

    upload(page, write_series([legacy_multiframe(mr_series(tumor_channels()))], tmp_path, [name]))

    expect(page.locator("#caption")).to_contain_text("…, frame 1")
    expect(page.locator("#result")).to_contain_text("…, frame 3")
